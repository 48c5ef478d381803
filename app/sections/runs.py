"""Runs: every training run with its state, filters, cancel, live curves and the comparison of groups."""

import streamlit as st

from largestep.app import widgets
from largestep.errors import LargestepError
from largestep.home import resolve_home
from largestep.ui import runs

REFRESH_S = 3  # seconds between live refreshes while runs are queued or running

home = resolve_home()
st.session_state["runs.full_run"] = True  # see running_runs: tells its timed reruns from a full run

st.title("Runs")
st.caption("Training runs: the baseline and the recommendation side by side, live while they train.")

every_run = widgets.load_or_stop(runs.load_runs, home, empty=runs.START_MESSAGE)

# -- filters and the table -----------------------------------------------------------------------
options = runs.filter_options(every_run)
left, middle, right, last = st.columns(4)
states = left.multiselect("State", options["states"], key="runs.states", placeholder="any state")
workloads = middle.multiselect("Workload", options["workloads"], key="runs.workloads", placeholder="any workload")
groups = right.multiselect(
    "Group",
    options["groups"],
    key="runs.groups",
    placeholder="any group",
    help="Repeats of one config (other seeds) share a group.",
)
roles = last.multiselect("Role", options["roles"], key="runs.roles", placeholder="any role")
shown = runs.filter_runs(every_run, states, workloads, groups, roles)
st.dataframe(
    runs.runs_table(shown),
    hide_index=True,
    width="stretch",
    key="runs.table",
    column_config={
        "LR": st.column_config.NumberColumn(format="%.3g"),
        "final val loss": st.column_config.NumberColumn(format="%.4f"),
    },
)
st.caption(f"{len(shown)} of {len(every_run)} runs")
if unreadable := runs.unreadable_note(every_run):
    st.warning(unreadable)


# -- runs in flight ------------------------------------------------------------------------------
def cancel(run_id: str) -> None:
    st.session_state["runs.flash"] = runs.cancel(home, run_id)


@st.fragment(run_every=REFRESH_S if runs.active_runs(every_run) else None)
def running_runs() -> None:
    if "runs.flash" in st.session_state:
        st.toast(st.session_state.pop("runs.flash"))
    progress = runs.run_progress(home, every_run)
    if not st.session_state.pop("runs.full_run", False) and any(p.state not in runs.LIVE_STATES for p in progress):
        st.rerun()  # a run ended: redraw the table, the filters and the charts
    for run in progress:
        with st.container(border=True):
            text, button = st.columns([6, 1], vertical_alignment="center")
            text.markdown(f"**{run.label}** · run `{run.id}` · {run.state.lower()}")
            text.progress(run.progress, text=run.detail)
            button.button("Cancel", key=f"cancel.{run.id}", on_click=cancel, args=(run.id,))


running_runs()

# -- curves of the selected runs -----------------------------------------------------------------
st.subheader("Curves")
labels = runs.run_labels(shown)
if "runs.selected" not in st.session_state:  # a shared link: ?run=ID&run=ID; else the latest groups
    st.session_state["runs.selected"] = [r for r in st.query_params.get_all("run") if r in labels] or [
        r for r in runs.default_selection(shown) if r in labels
    ]
selected = st.multiselect(
    "Runs to chart",
    list(labels),
    format_func=labels.get,
    key="runs.selected",
    placeholder="choose runs to chart and compare",
)
if selected:
    st.query_params["run"] = selected  # the address names the charted runs, so it can be shared
else:
    st.query_params.pop("run", None)
if not selected:
    st.info("Select runs above to chart their curves; select two or more runs or groups to compare them.")
    st.stop()

try:
    metric_names = runs.metric_choices(home, selected)
except LargestepError as exc:
    st.error(str(exc))
    st.stop()
left, middle, right = st.columns([2, 2, 3])
metric = middle.selectbox("Metric", metric_names or [runs.DEFAULT_METRIC], key="runs.metric")
x = left.selectbox("x-axis", list(runs.X_AXES), format_func=runs.X_AXES.get, key="runs.x")
smoothing = right.slider(
    "Smoothing (EMA)",
    0.0,
    0.99,
    0.6,
    0.01,
    key="runs.smoothing",
    help="Applied to the downsampled series (at most ~1,000 points per run); 0: raw.",
)
left, right, _ = st.columns([1, 1, 5])
log_x = left.toggle("log x", key="runs.log_x")
log_y = right.toggle("log y", key="runs.log_y")

units = runs.comparison_units(every_run, selected)
baseline = None
if len(units) >= 2:
    baseline = st.selectbox(
        "Baseline for the comparison",
        units,
        key="runs.baseline",
        help="Every other run or group is timed to this one's best validation loss.",
    )
live = any(r in runs.active_runs(every_run) for r in selected)


@st.fragment(run_every=REFRESH_S if live else None)
def charts() -> None:
    try:
        if live:
            runs.load_runs(home)  # ingest what the jobs have written since
        view, comparison = runs.selection_view(
            home, selected, labels, metric, x, log_x, log_y, smoothing, units, baseline
        )
    except LargestepError as exc:
        st.error(str(exc))
        return
    st.plotly_chart(view.figure, key="runs.curves", width="stretch")
    if comparison is None:
        return
    st.subheader("Comparison")
    if comparison.error:
        st.info(f"No comparison yet: {comparison.error}.")
        return
    for column, item in zip(st.columns(max(3, len(comparison.metrics))), comparison.metrics):
        column.metric(item.label, item.value, help=item.help)
    if comparison.conditions:
        st.warning(comparison.conditions, icon=":material/warning:")
    st.dataframe(comparison.table, hide_index=True, width="stretch", key="runs.comparison")
    st.caption(comparison.caption)
    st.plotly_chart(comparison.figure, key="runs.compare_chart", width="stretch")


charts()
