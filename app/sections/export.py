"""Export: a recommendation as a config file or a ready snippet, and the whole story as an HTML report."""

import streamlit as st

from largestep.app import widgets
from largestep.errors import LargestepError
from largestep.home import resolve_home
from largestep.ui import export, report

home = resolve_home()

st.title("Export")
st.caption(
    "Take a recommendation to your own training code: config files, snippets for PyTorch, Hugging Face, "
    "Lightning and DeepSpeed, and the CLI line that reproduces it."
)

choices = widgets.load_or_stop(export.recommendation_choices, home, empty=export.EXPORT_START)

labels = {c.id: c.label for c in choices}
rec_id = st.selectbox(
    "Recommendation", list(labels), format_func=labels.get, key="export.recommendation", help="Newest first."
)
rec = export.load_recommendation(home, rec_id)
if rec is None:
    st.error(f"Recommendation {rec_id} is no longer stored.")
    st.stop()

left, middle, right = st.columns([1, 1, 2])
devices = left.number_input(
    "Devices",
    min_value=1,
    value=rec.get("world_size") or 1,
    step=1,
    key="export.devices",
    help="Data-parallel processes the global batch is split over.",
)
micro_batch = middle.number_input(
    "Micro-batch per device",
    min_value=1,
    value=None,
    step=1,
    key="export.micro_batch",
    placeholder="auto: the whole share",
    help="Samples per forward/backward pass; the rest becomes gradient accumulation.",
)
fmt = right.selectbox("Preview", export.FORMATS, format_func=export.FORMAT_LABELS.get, key="export.format")

try:
    view = export.export_view(rec, fmt, devices=int(devices), micro_batch=int(micro_batch) if micro_batch else None)
except LargestepError as exc:
    st.error(str(exc))
    view = None

if view is not None:
    st.caption(f"{view.split} · learning rate {rec['learning_rate']:.4g} (tied to the global batch, unchanged)")
    st.markdown("**Download**")
    row = st.container(horizontal=True)
    for item in view.downloads:
        row.download_button(
            item.label,
            item.data,
            file_name=item.file_name,
            mime=item.mime,
            key=f"export.download.{item.fmt}",
            on_click="ignore",
            icon=":material/download:",
        )
    st.code(view.preview, language=view.language, line_numbers=view.language == "python", wrap_lines=True)

st.subheader("Report")
st.caption(
    "One self-contained HTML file: the profile's charts, this recommendation and its verification runs, "
    "interactive and readable offline."
)


def report_html() -> str:
    # built only when clicked (plotly.js makes it a few MiB); a failure becomes a page that says why
    try:
        return report.build_report(home, recommendation_id=rec_id)
    except LargestepError as exc:
        return report.error_page(str(exc))


st.download_button(
    "HTML report",
    report_html,
    file_name=f"largestep-report-{rec_id}.html",
    mime="text/html",
    key="export.download.report",
    on_click="ignore",
    icon=":material/description:",
    type="primary",
)
