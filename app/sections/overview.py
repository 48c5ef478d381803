"""Overview: this machine's hardware, one button that profiles and trains, and where it has got to."""

import os

import streamlit as st

from largestep.app import widgets
from largestep.errors import LargestepError
from largestep.home import resolve_home
from largestep.ui import overview

REFRESH_S = 2  # seconds between live refreshes of a running autopilot

home = resolve_home()


@st.cache_data(ttl=10, show_spinner=False)
def workload_choices(folder: str) -> tuple[dict, list[str]]:
    return overview.workload_choices(folder)


st.title("Overview")
st.caption(
    "Profile step time against batch size, recommend a larger batch with a scaled learning rate, "
    "and prove it with real training runs — in one click."
)

# -- hardware ------------------------------------------------------------------------------------
report = widgets.hardware_card(quiet_note=True)

# -- profile & train -----------------------------------------------------------------------------
st.subheader("Profile & train")
choices, problems = workload_choices(os.getcwd())  # the working folder decides which largestep.toml is read
for problem in problems:
    st.warning(problem, icon=":material/warning:")
workload = st.selectbox(
    "Workload",
    list(choices),
    key="overview.workload",
    format_func=lambda name: choices[name].label,
    help="Built-in workloads, entry points in group largestep.workloads, and the workloads listed in "
    "largestep.toml (or [tool.largestep] in pyproject.toml) where the dashboard was started.",
)
devices = overview.device_options(report)
with st.form("overview.form", border=False):
    data_path = label = ""
    if workload == overview.TABLE_WORKLOAD and choices[workload].source == "builtin":
        left, right = st.columns(2)
        data_path = left.text_input(
            "Data file (CSV or Parquet)", key="overview.data_path", placeholder="/data/transactions.parquet"
        )
        label = right.text_input("Label column", key="overview.label", placeholder="is_fraud")
    left, middle, right = st.columns(3)
    device = left.selectbox("Device", list(devices), format_func=devices.get, key="overview.device")
    repeats = middle.number_input(
        "Repeats (seeds per arm)",
        min_value=1,
        max_value=overview.MAX_REPEATS,
        value=3,
        step=1,
        key="overview.repeats",
        help="Each arm (baseline, recommended) trains this many seeds; two or more give a p-value.",
    )
    epochs = right.number_input(
        "Epochs",
        min_value=0.1,
        value=None,
        step=1.0,
        key="overview.epochs",
        placeholder="the workload's own",
        help="How long the baseline trains; empty: the workload's own. The recommended "
        "runs may get more, as a larger batch needs more samples.",
    )
    compile_model = st.checkbox(
        "Compile the model (torch.compile)",
        key="overview.compile",
        help="Compiled before any clock starts; the compile time is recorded apart. Each batch size recompiles.",
    )
    both_arms = st.checkbox(
        "Train both arms even if the baseline is recommended",
        key="overview.both_arms",
        help="By default, when no measured batch is predicted faster than yours, the autopilot "
        "says so and trains nothing; ticked, it trains and compares both arms anyway.",
    )
    schedule_arm = st.checkbox(
        "Also train a batch that grows (a third arm)",
        key="overview.schedule_arm",
        help="Estimates the noise scale along a baseline run, plans the batch schedule from "
        "it, and trains it beside the baseline and the fixed batch, in the same rotation.",
    )
    button, retry = st.columns([1, 3], vertical_alignment="center")
    submitted = button.form_submit_button(
        "Profile & train", type="primary", key="overview.start", icon=":material/rocket_launch:"
    )
    until_verified = retry.checkbox(
        "Until verified: if the pair fails, learn from it and try the next",
        key="overview.until_verified",
        help="A pair that is not verified (faster, with a quality equivalent or better) is recorded as a calibration "
        "point, and the next pair the corrected noise model ranks is tried (the square-root rule at the same "
        "batch after a loss of quality, else a smaller batch): at most 2 pairs, each tested at level 0.05 so "
        "that trying again cannot manufacture a verified pair, which needs 4 or more repeats.",
    )

if submitted:
    form = overview.AutopilotForm(
        workload=workload,
        device=device,
        repeats=int(repeats),
        epochs=epochs,
        data_path=data_path,
        label=label,
        compile=compile_model,
        both_arms=both_arms,
        schedule_arm=schedule_arm,
        until_verified=until_verified,
    )
    try:
        with st.spinner("Checking the workload …"):
            job_id = overview.submit_autopilot(home, form, choices)
    except LargestepError as exc:
        st.error(str(exc))
    else:
        st.session_state["overview.selected"] = job_id
        st.toast(f"Started autopilot {job_id}")

# -- where it has got to -------------------------------------------------------------------------
autopilots = widgets.load_or_stop(overview.autopilot_choices, home, empty=overview.START_MESSAGE)

labels = {a.id: a.label for a in autopilots}
if st.session_state.get("overview.selected") not in labels:
    st.session_state["overview.selected"] = autopilots[0].id
st.subheader("Autopilot")
if len(autopilots) > 1:
    st.selectbox(
        "Autopilot", list(labels), format_func=labels.get, key="overview.selected", label_visibility="collapsed"
    )
selected = st.session_state["overview.selected"]
live = next(a.live for a in autopilots if a.id == selected)


def cancel(job_id: str) -> None:
    st.session_state["overview.flash"] = overview.cancel(home, job_id)


def restart(autopilot_id: str) -> None:
    try:
        st.session_state["overview.selected"] = overview.restart_autopilot(home, autopilot_id)
        st.session_state["overview.flash"] = f"Started autopilot {st.session_state['overview.selected']}"
    except LargestepError as exc:
        st.session_state["overview.flash"] = str(exc)


def autopilot_panel(autopilot_id: str, was_live: bool) -> None:
    if "overview.flash" in st.session_state:
        st.toast(st.session_state.pop("overview.flash"))
    try:
        view = overview.autopilot_view(home, autopilot_id)
    except LargestepError as exc:
        st.error(str(exc))
        return
    if view is None:
        st.info(f"Autopilot {autopilot_id} is not in the database yet.")
        return
    if was_live and not view.live:
        st.rerun()  # it has just ended: redraw the page once, without the timer

    with st.container(border=True):
        text, button = st.columns([6, 1], vertical_alignment="center")
        text.markdown(view.caption)
        if view.live:
            button.button(
                "Cancel",
                key="overview.cancel",
                on_click=cancel,
                args=(view.id,),
                icon=":material/stop_circle:",
                help="Stop the autopilot and every job it started.",
            )
        running = next((p.name for p in view.phases if p.status == "running"), view.phase)
        st.progress(
            view.progress,
            text=f"{running} · {view.progress:.0%}"
            if view.live
            else ("done" if view.state == "FINISHED" else view.state.lower()),
        )
        for phase in view.phases:
            name = f"**{phase.name}**" if phase.status == "running" else phase.name
            detail = f" — {phase.detail}" if phase.detail else ""
            color = {"done": "green", "running": "blue", "failed": "red", "cancelled": "orange"}.get(
                phase.status, "gray"
            )
            st.markdown(
                f":{color}[{phase.icon}] {name} :gray[({phase.status}){detail}]",
                help=overview.PHASE_HELP.get(phase.name),
            )
        if view.recommendation:
            st.markdown(f"**Recommended:** {view.recommendation}")
        if view.error:
            st.error(f"The autopilot ended {view.state.lower()}: {view.error}")
        if view.untrusted:
            st.warning(view.untrusted, icon=":material/warning:")
            st.button(
                "Profile & train again",
                key="overview.reprofile",
                on_click=restart,
                args=(view.id,),
                icon=":material/refresh:",
                help="Start the autopilot again: it profiles afresh and waits for a "
                "quiet window again should the machine still be busy.",
            )

    if view.headline:
        st.subheader("Headline")
        if view.accepted_load:
            st.warning(view.accepted_load, icon=":material/report:")
        for column, metric in zip(st.columns(4), view.metrics):
            column.metric(metric.label, metric.value, help=metric.help)
        box = {"good": st.success, "bad": st.error}.get(view.tone, st.warning)  # the colour follows the verdict
        box(view.headline["text"], icon=":material/bolt:")
        if view.headline.get("schedule"):  # --arms baseline,fixed,schedule: the growing batch's own line
            schedule = view.headline["schedule"]
            {"good": st.success, "bad": st.error}.get(schedule.get("tone"), st.info)(
                schedule["text"], icon=":material/trending_up:"
            )
        for warning in view.warnings:
            st.warning(warning, icon=":material/warning:")
    if view.comparison is not None:
        st.markdown("**Comparison** · time to the baseline's validation loss, training time only")
        st.dataframe(view.comparison, hide_index=True, width="stretch")
        with st.expander("Every run"):
            st.dataframe(view.runs, hide_index=True, width="stretch")
        st.page_link("sections/runs.py", label="Training curves on the Runs page", icon=":material/monitoring:")


# Refreshes itself while the autopilot runs; static once it has ended.
st.fragment(autopilot_panel, run_every=REFRESH_S if live else None)(selected, live)
