"""Profiles: this machine's hardware, launching a profile, jobs in flight, one profile's charts."""

import streamlit as st

from largestep.app import widgets
from largestep.errors import LargestepError
from largestep.home import resolve_home
from largestep.ui import profiles

REFRESH_S = 2  # seconds between live refreshes of running jobs, and of a profile being measured

home = resolve_home()
# Set on every full run of this page; the jobs fragment clears it, so it can tell its own timed
# reruns (where a changed job list needs a full redraw) from a full run (already redrawing).
st.session_state["profiles.full_run"] = True


@st.cache_data(ttl=60, show_spinner=False)
def workloads() -> list[dict]:
    return profiles.list_workloads()


st.title("Profiles")
st.caption("How training-step time, throughput and memory grow with batch size on this machine.")

# -- hardware ------------------------------------------------------------------------------------
report = widgets.hardware_card()

# -- launching a profile -------------------------------------------------------------------------
st.subheader("Profile a workload")
available = {w["name"]: w for w in workloads()}
workload = st.selectbox(
    "Workload",
    list(available),
    key="profile.workload",
    format_func=lambda name: f"{name} — {available[name]['description']}" if available[name]["description"] else name,
    help="Built-in workloads and workloads installed as entry points in group largestep.workloads.",
)
devices = profiles.device_options(report)
with st.form("profile.form"):
    data_path = label = ""
    if workload == profiles.TABLE_WORKLOAD:
        left, right = st.columns(2)
        data_path = left.text_input(
            "Data file (CSV or Parquet)", key="profile.data_path", placeholder="/data/transactions.parquet"
        )
        label = right.text_input("Label column", key="profile.label", placeholder="is_fraud")
    left, right = st.columns(2)
    device = left.selectbox("Device", list(devices), format_func=devices.get, key="profile.device")
    dtype = right.selectbox("Precision", list(profiles.DTYPES), key="profile.dtype")
    left, middle, right = st.columns(3)
    min_batch = left.number_input(
        "Min batch",
        min_value=1,
        value=None,
        step=1,
        key="profile.min_batch",
        placeholder="auto: a quarter of the baseline",
    )
    max_batch = middle.number_input(
        "Max batch", min_value=1, value=profiles.DEFAULT_MAX_BATCH, step=1, key="profile.max_batch"
    )
    batch_list = right.text_input(
        "Or these batch sizes only",
        key="profile.batch_list",
        placeholder="32,128,512,2048",
        help="Comma-separated; replaces min and max.",
    )
    left, right = st.columns(2)
    budget = left.text_input(
        "Memory budget",
        key="profile.memory_budget",
        placeholder="e.g. 12GiB (empty: none)",
        help="Stop before a batch predicted or measured above this. Units: MiB, GiB, GB ...",
    )
    full = right.checkbox(
        "Full sweep", key="profile.full", help="Keep going past a throughput plateau, up to the max batch."
    )
    submitted = st.form_submit_button("Start profiling", type="primary", key="profile.submit")

if submitted:
    form = profiles.ProfileForm(
        workload=workload,
        device=device,
        dtype=dtype,
        min_batch=min_batch,
        max_batch=max_batch,
        batch_list=batch_list,
        memory_budget=budget,
        full=full,
        data_path=data_path,
        label=label,
    )
    try:
        with st.spinner("Checking the workload …"):
            job_id = profiles.submit_profile(home, form, list(available))
    except LargestepError as exc:
        st.error(str(exc))
    else:
        st.success(f"Started profile job `{job_id}`; its progress shows below.")


# -- jobs in flight ------------------------------------------------------------------------------
def cancel(job_id: str) -> None:
    st.session_state["profiles.flash"] = profiles.cancel(home, job_id)


@st.fragment(run_every=REFRESH_S)
def running_jobs() -> None:
    if "profiles.flash" in st.session_state:
        st.toast(st.session_state.pop("profiles.flash"))
    try:
        live = profiles.live_jobs(home)
    except LargestepError as exc:
        st.error(str(exc))
        return
    previous = st.session_state.get("profiles.signature")
    st.session_state["profiles.signature"] = live.signature
    full_run = st.session_state.pop("profiles.full_run", False)
    if not full_run and previous is not None and previous != live.signature:
        if live.newest_profile != previous[-1]:
            st.session_state["profiles.show_next"] = live.newest_profile  # a new profile: show it
        st.rerun()  # a job started or ended, or a profile appeared: redraw the selector and charts
    for failure in live.failures:
        st.warning(f"Profile job `{failure.label}` {failure.value}")
    for job in live.running:
        with st.container(border=True):
            text, button = st.columns([6, 1], vertical_alignment="center")
            text.markdown(f"**{job.workload}** on `{job.device}` · job `{job.id}` · {job.state.lower()}")
            text.progress(job.progress, text=" · ".join(filter(None, [job.phase, job.detail])))
            button.button("Cancel", key=f"cancel.{job.id}", on_click=cancel, args=(job.id,))


running_jobs()

# -- one profile ---------------------------------------------------------------------------------
st.subheader("Results")
choices = widgets.load_or_stop(profiles.profile_choices, home, empty=profiles.START_MESSAGE)
labels = {c.id: c.label for c in choices}
if st.session_state.get("profiles.show_next") in labels:
    st.session_state["profiles.selected"] = st.session_state.pop("profiles.show_next")
selected = st.selectbox("Profile", list(labels), format_func=labels.get, key="profiles.selected")
live = next(c.live for c in choices if c.id == selected)
others = [profile_id for profile_id in labels if profile_id != selected]
# a profile overlaid before it was selected (or deleted since) is no longer an option
st.session_state["profiles.overlay"] = [p for p in st.session_state.get("profiles.overlay", []) if p in others]
overlay = st.multiselect(
    "Overlay other profiles",
    others,
    format_func=labels.get,
    key="profiles.overlay",
    disabled=not others,
    placeholder="compare step time and throughput with …",
    help="Their step time and throughput are drawn dotted over this profile's.",
)


def profile_panel(profile_id: str, overlay_ids: tuple[str, ...]) -> None:
    try:
        view = profiles.profile_view(home, profile_id, overlay_ids)
    except LargestepError as exc:
        st.error(str(exc))
        return
    if view is None:
        st.info(f"Profile {profile_id} has no data yet.")
        return
    st.markdown(view.caption)
    if view.untrusted:
        st.warning(view.untrusted, icon=":material/warning:")
    elif view.inconsistency:
        st.warning(view.inconsistency, icon=":material/warning:")
    if view.threads_note:
        st.info(f"Threads: {view.threads_note}", icon=":material/memory:")
    for column, metric in zip(st.columns(4), view.metrics):
        column.metric(metric.label, metric.value, help=metric.help)
    figures = list(view.figures.items())
    pairs = [figures[i : i + 2] for i in range(0, len(figures), 2)]
    for pair in pairs:
        for column, (name, figure) in zip(st.columns(2) if len(pair) == 2 else [st.container()], pair):
            column.plotly_chart(figure, key=f"chart.{name}", width="stretch")
    st.markdown("**Points**")
    st.dataframe(view.table, hide_index=True, width="stretch")


# Refreshes itself while the profile is still measuring; static once it has ended.
st.fragment(profile_panel, run_every=REFRESH_S if live else None)(selected, tuple(overlay))
