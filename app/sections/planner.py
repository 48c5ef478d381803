"""Planner: how many experiments a day's compute buys, at the baseline and at the recommendation."""

import streamlit as st

from largestep.app import widgets
from largestep.errors import LargestepError
from largestep.home import resolve_home
from largestep.ui import planner

home = resolve_home()


def forget_inputs() -> None:
    """Another profile: its own epochs and noise scale."""
    for key in ("planner.epochs", "planner.noise_scale"):
        st.session_state.pop(key, None)


st.title("Planner")
st.caption(
    "For each measured batch size: the time one training run takes, and how many runs fit into your "
    "compute budget per day — the baseline and the recommendation side by side."
)

choices = widgets.load_or_stop(planner.profile_choices, home, empty=planner.PLANNER_START)
default_profile = widgets.load_or_stop(planner.default_planner_profile, home, empty=planner.PLANNER_START)

labels = {c.id: c.label for c in choices}
ids = list(labels)
if "planner.profile" not in st.session_state and default_profile in labels:
    st.session_state["planner.profile"] = default_profile  # the latest recommendation's profile
profile_id = st.selectbox(
    "Profile",
    ids,
    format_func=labels.get,
    key="planner.profile",
    on_change=forget_inputs,
    help="Defaults to the profile of the latest recommendation.",
)
defaults = planner.planner_defaults(home, profile_id)
if defaults is None:
    st.info(f"Profile `{profile_id}` has no measured batch sizes yet.")
    st.stop()

left, middle, right, last = st.columns(4)
hours = left.number_input(
    "GPU hours per day",
    min_value=0.0,
    max_value=24.0,
    value=24.0,
    step=1.0,
    key="planner.gpu_hours",
    help="Hours each GPU is free for these experiments, per day.",
)
gpus = middle.number_input(
    "GPUs", min_value=1, value=1, step=1, key="planner.gpus", help="Each runs one experiment at a time."
)
epochs = right.number_input(
    "Epochs per run",
    min_value=0.0,
    value=defaults.epochs,
    step=1.0,
    key="planner.epochs",
    help="Passes over the training set at the baseline batch (default: the workload's).",
)
noise_scale = last.text_input(
    "Noise scale (samples)",
    value=f"{defaults.noise_scale:.0f}" if defaults.noise_scale else "",
    key="planner.noise_scale",
    placeholder="empty: perfect scaling",
    help="B_noise: larger batches need S(B) = S_min(1 + B_noise/B) steps. Defaults to the recommendation's.",
)

form = planner.PlannerForm(
    profile_id=profile_id, gpu_hours_per_day=hours, gpus=gpus, epochs=epochs, noise_scale=noise_scale
)
try:
    view = planner.planner_view(home, form)
except LargestepError as exc:
    st.error(str(exc))
    st.stop()

for note in view.notes:
    st.warning(note)
st.markdown(view.headline)
for column, metric in zip(st.columns(len(view.metrics)), view.metrics):
    column.metric(metric.label, metric.value, help=metric.help)
st.plotly_chart(view.figure, key="planner.chart", width="stretch")
st.dataframe(planner.highlight_roles(view.table), hide_index=True, width="stretch")
st.caption(view.caption)
