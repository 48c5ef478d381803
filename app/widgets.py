"""What the dashboard's pages share: the hardware card, and loading with a useful empty state."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from largestep.errors import LargestepError
from largestep.measure import telemetry
from largestep.ui import widgets as views


@st.cache_data(ttl=30, show_spinner=False)
def hardware_report() -> dict:
    return telemetry.hardware_report()


def hardware_card(quiet_note: bool = False) -> dict:
    """Each device with its facts and live readings; why NVML is absent, where it is. Returns the report."""
    report = hardware_report()
    hardware = views.hardware_view(report)
    with st.container(border=True):
        for card in hardware.cards:
            st.markdown(f"**{card.title}** · {card.subtitle}")
            shown = card.facts + card.live
            for column, metric in zip(st.columns(max(4, len(shown))), shown):
                column.metric(metric.label, metric.value, help=metric.help)
        if hardware.nvml_note:
            if quiet_note:
                st.caption(f":material/info: {hardware.nvml_note}")
            else:
                st.info(hardware.nvml_note, icon=":material/info:")
        st.caption(hardware.software)
    return report


def load_or_stop(load: Callable[..., Any], *args: Any, empty: str) -> Any:
    """``load(*args)``; on an error show it, on nothing stored show where to start; either way stop the page."""
    try:
        result = load(*args)
    except LargestepError as exc:
        st.error(str(exc))
        st.stop()
    nothing = result.empty if hasattr(result, "empty") else not result
    if nothing:
        st.info(empty, icon=":material/rocket_launch:")
        st.stop()
    return result
