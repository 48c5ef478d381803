"""Recommend: from a profile and the noise scale to a batch size, a learning rate and a warm-up."""

import streamlit as st

from largestep.app import widgets
from largestep.errors import LargestepError
from largestep.format import format_bytes
from largestep.home import resolve_home
from largestep.ui import recommend

REFRESH_S = 2  # seconds between refreshes of a running noise-scale job

home = resolve_home()
FORM_KEYS = ("recommend.baseline_batch", "recommend.baseline_lr", "recommend.noise_id")


def forget_inputs() -> None:
    """Another profile: its own defaults, not the previous profile's numbers."""
    for key in FORM_KEYS:
        st.session_state.pop(key, None)
    st.session_state.pop("recommend.shown", None)


st.title("Recommend")
st.caption("A larger batch with the learning rate scaled to keep lr/batch fixed, chosen from measured step times.")

choices = widgets.load_or_stop(recommend.profile_choices, home, empty=recommend.RECOMMEND_START)

labels = {c.id: c.label for c in choices}
profile_id = st.selectbox(
    "Profile", list(labels), format_func=labels.get, key="recommend.profile", on_change=forget_inputs
)
defaults = recommend.profile_defaults(home, profile_id)
if defaults is None or not defaults["measured"]:
    st.info(f"Profile `{profile_id}` has no measured batch sizes yet; wait for it to finish on the Profiles page.")
    st.stop()

# -- a profile that cannot be trusted: refused unless accepted -----------------------------------
accept_load = False
if defaults["threads_note"]:
    st.info(f"Threads: {defaults['threads_note']}", icon=":material/memory:")
if defaults["refusal"]:
    with st.container(border=True):
        st.warning(defaults["refusal"], icon=":material/warning:")
        left, right = st.columns(2, vertical_alignment="center")
        if left.button(
            f"Re-profile the {len(defaults['untrusted'])} untrusted batch sizes",
            key="recommend.reprofile",
            icon=":material/refresh:",
            help="Measure them again (the other points are carried over); the "
            "new profile appears in the list above when it ends.",
        ):
            try:
                with st.spinner("Starting the profile …"):
                    job_id = recommend.start_reprofile(home, profile_id)
            except LargestepError as exc:
                st.error(str(exc))
            else:
                st.success(f"Started profile `{job_id}`: pick it above when it has finished.")
        accept_load = right.checkbox(
            recommend.ACCEPT_LOAD_LABEL,
            key="recommend.accept_load",
            help="Recommend from this profile anyway: the recommendation carries the "
            "warning wherever it is shown and exported.",
        )

# -- inputs --------------------------------------------------------------------------------------
st.subheader("Baseline and rule")
left, middle, right = st.columns(3)
baseline_batch = left.number_input(
    "Baseline batch",
    min_value=1,
    step=1,
    value=defaults["baseline_batch"],
    key="recommend.baseline_batch",
    help="The batch you train with now; it must be one the profile measured: "
    + ", ".join(str(b) for b in defaults["measured"]),
)
baseline_lr = middle.text_input(
    "Baseline learning rate",
    value=f"{defaults['baseline_lr']:g}" if defaults["baseline_lr"] else "",
    key="recommend.baseline_lr",
    help="Its learning rate, e.g. 0.001 or 1e-3.",
)
rule = right.radio(
    "Learning-rate rule",
    recommend.RULES,
    key="recommend.rule",
    horizontal=True,
    format_func={"linear": "linear (lr/batch fixed)", "sqrt": "square root", "noise": "noise scale"}.get,
    help="linear: Goyal et al. 2017, Smith et al. 2021; square root: for adaptive optimizers "
    "(Malladi et al. 2022); noise scale: McCandlish et al. 2018's lr0·(1 + B_noise/B0)/"
    "(1 + B_noise/B), which stops growing near the noise scale (needs an estimate).",
)
left, right = st.columns(2)
headroom = left.number_input(
    "Memory headroom",
    min_value=0.05,
    max_value=1.0,
    value=0.9,
    step=0.05,
    key="recommend.headroom",
    help="Candidates may use at most this share of the device's memory"
    + (f" ({format_bytes(defaults['device_total_memory_bytes'])})" if defaults.get("device_total_memory_bytes") else "")
    + ".",
)
max_lr = right.text_input(
    "Max learning rate",
    key="recommend.max_lr",
    placeholder="empty: no cap",
    help="Never recommend a learning rate above this.",
)

# -- noise scale ---------------------------------------------------------------------------------
st.subheader("Gradient noise scale")
try:
    noise = recommend.noise_choices(home, defaults["workload"])
except LargestepError as exc:
    st.error(str(exc))
    noise = []
modes = list(recommend.NOISE_MODES)
picked = st.session_state.pop("recommend.pick_noise", None)
if picked in {n.id for n in noise}:
    st.session_state["recommend.noise_mode"] = "stored"
    st.session_state["recommend.noise_id"] = picked
if "recommend.noise_mode" not in st.session_state:
    st.session_state["recommend.noise_mode"] = "stored" if noise else "perfect"
noise_mode = st.radio(
    "Noise scale to use",
    modes,
    format_func=recommend.NOISE_MODES.get,
    key="recommend.noise_mode",
    horizontal=True,
    help="B_noise (McCandlish et al. 2018) sets how fast the steps needed fall as the batch grows.",
)
noise_id, noise_scale = None, ""
if noise_mode == "stored":
    if noise:
        noise_labels = {n.id: n.label for n in noise}
        noise_id = st.selectbox(
            "Stored estimate", list(noise_labels), format_func=noise_labels.get, key="recommend.noise_id"
        )
    else:
        st.caption(f"No reliable estimate for {defaults['workload']} yet: estimate one below.")
elif noise_mode == "manual":
    noise_scale = st.text_input("Noise scale (samples)", key="recommend.noise_scale", placeholder="e.g. 2000")

devices = recommend.device_options(widgets.hardware_report())
with st.expander("Estimate the noise scale now (runs a job)"):
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    device = left.selectbox("Device", list(devices), format_func=devices.get, key="recommend.noise_device")
    if right.button("Estimate", key="recommend.estimate"):
        try:
            with st.spinner("Checking the workload …"):
                st.session_state["recommend.noise_job"] = recommend.start_noise_estimate(home, profile_id, device)
        except LargestepError as exc:
            st.error(str(exc))


@st.fragment(run_every=REFRESH_S)
def noise_job() -> None:
    job_id = st.session_state.get("recommend.noise_job")
    if not job_id:
        return
    try:
        progress = recommend.noise_progress(home, job_id)
    except LargestepError as exc:
        st.error(str(exc))
        return
    if not progress.done:
        st.progress(progress.progress, text=f"`{job_id}` · {progress.message}")
        return
    st.session_state.pop("recommend.noise_job")
    if progress.b_simple is None:
        st.session_state["recommend.flash"] = ("error", progress.message)
    else:
        st.session_state["recommend.flash"] = ("success", progress.message)
        st.session_state["recommend.pick_noise"] = job_id  # chosen on the redraw, before its widgets exist
    st.rerun()  # the new estimate joins the list above


noise_job()
flash = st.session_state.pop("recommend.flash", None)
if flash:
    (st.success if flash[0] == "success" else st.error)(flash[1])

# -- compute -------------------------------------------------------------------------------------
if st.button("Compute and save the recommendation", type="primary", key="recommend.compute"):
    form = recommend.RecommendForm(
        profile_id=profile_id,
        baseline_batch=baseline_batch,
        baseline_lr=baseline_lr,
        rule=rule,
        noise_mode=noise_mode,
        noise_id=noise_id,
        noise_scale=noise_scale,
        memory_headroom=headroom,
        max_lr=max_lr,
        accept_load=accept_load,
    )
    try:
        with st.spinner("Computing …"):
            rec = recommend.compute_recommendation(home, form)
    except LargestepError as exc:
        st.error(str(exc))
    else:
        st.session_state["recommend.shown"] = rec["recommendation_id"]
        st.success(f"Saved recommendation `{rec['recommendation_id']}`.")

# -- the recommendation --------------------------------------------------------------------------
shown = st.session_state.get("recommend.shown")
try:
    rec = recommend.load_recommendation(home, shown) if shown else recommend.latest_recommendation_for(home, profile_id)
except LargestepError as exc:
    st.error(str(exc))
    st.stop()
if rec is None:
    st.info("No recommendation for this profile yet: set the inputs above and press **Compute and save**.")
    st.stop()

view = recommend.recommendation_view(rec)
st.subheader("Recommendation")
st.markdown(view.headline)
if view.accepted_load:
    st.warning(view.accepted_load, icon=":material/report:")
if view.uncertain:
    st.warning(view.uncertain, icon=":material/warning:")
for column, metric in zip(st.columns(len(view.metrics)), view.metrics):
    column.metric(metric.label, metric.value, help=metric.help)
for note in view.notes:
    st.caption(note)
st.plotly_chart(view.figure, key="recommend.chart", width="stretch")
st.markdown("**Why**")
st.markdown("\n".join(f"- {reason}" for reason in view.reasons))
st.markdown("**Candidates**")
st.dataframe(recommend.highlight_roles(view.candidates), hide_index=True, width="stretch")

if view.schedule is not None:
    st.subheader("A batch that grows as training needs it")
    st.markdown(view.schedule.headline)
    st.plotly_chart(view.schedule.figure, key="recommend.schedule_chart", width="stretch")
    st.dataframe(view.schedule.phases, hide_index=True, width="stretch")
    st.markdown("\n".join(f"- {reason}" for reason in view.schedule.reasons))
else:
    st.caption(
        "No noise curve for this workload yet: `largestep noise --workload W --at 0,0.25,0.5,1` measures one, "
        "and the next recommendation plans a growing batch schedule from it."
    )

st.markdown("**Export**")
row = st.container(horizontal=True)
for item in recommend.downloads(rec):
    row.download_button(
        item.label,
        item.data,
        file_name=item.file_name,
        mime=item.mime,
        key=f"recommend.download.{item.fmt}",
        on_click="ignore",
        icon=":material/download:",
    )
