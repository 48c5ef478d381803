"""Calibration: every verification's prediction against its measurement, and what the noise model learned."""

import streamlit as st

from largestep.app import widgets
from largestep.home import resolve_home
from largestep.ui import calibration

home = resolve_home()

st.title("Calibration")
st.caption(
    "Every verification in this home: the predicted speedup and its two factors (steps to the target, time per "
    "step) against what the runs measured, with y = x. Points above the line were under-predicted. A "
    "recommendation on the same workload and device ranks on the noise model these points correct."
)

every = widgets.load_or_stop(calibration.load_calibration, home, empty=calibration.START_MESSAGE)
left, right = st.columns(2)
workload = left.selectbox("Workload", ["every workload", *every.workloads], key="calibration.workload")
device = right.selectbox("Device", ["every device", *every.devices], key="calibration.device")
view = calibration.calibration_view(
    every.points, None if workload == "every workload" else workload, None if device == "every device" else device
)

for correction in view.corrections:
    st.info(correction["text"], icon=":material/model_training:")

event = st.plotly_chart(
    view.figure, key="calibration.chart", width="stretch", on_select="rerun", selection_mode="points"
)
st.dataframe(view.table, hide_index=True, width="stretch", key="calibration.table")

# -- one point's comparison: clicked on the chart, or picked here ----------------------------------------------
labels = calibration.verification_labels(view)
clicked = calibration.selected_from_chart(event)
if clicked in labels:
    st.session_state["calibration.selected"] = clicked
if st.session_state.get("calibration.selected") not in labels:
    st.session_state["calibration.selected"] = next(iter(labels))
chosen = st.selectbox(
    "Verification",
    list(labels),
    format_func=labels.get,
    key="calibration.selected",
    help="Click a point on the chart, or pick it here, to open its comparison.",
)
opened = calibration.verification_view(view, chosen)
if opened is not None:
    st.subheader("Its comparison")
    st.markdown(opened.title)
    if opened.learned:
        st.caption(f"What it says about the noise scale: {opened.learned}.")
    if opened.failed_why:
        st.warning(
            f"Not verified ({opened.failed_why}): recorded as a calibration point all the same.",
            icon=":material/report:",
        )
    if opened.comparison is not None:
        st.dataframe(opened.comparison, hide_index=True, width="stretch", key="calibration.comparison")
    st.markdown(f"[Its runs on the Runs page]({opened.link})")
