"""The dashboard's entry point: page setup, the sidebar's home, and routing. No page logic here.

Run with ``streamlit run app/main.py``; the home comes from ``$LARGESTEP_HOME`` (default
``./.largestep``).
"""

from pathlib import Path

import streamlit as st

from largestep.home import resolve_home

PAGES_DIR = Path(__file__).parent / "sections"  # not "pages": that name turns on legacy auto-discovery

# Sections of the navigation; later pages (Overview, Recommend, Runs, Planner, Export) are one
# st.Page line each, in the section where they belong.
PAGES = {
    "Start": [
        st.Page(
            PAGES_DIR / "overview.py",
            title="Overview",
            icon=":material/rocket_launch:",
            url_path="overview",
            default=True,
        ),
    ],
    "Measure": [
        st.Page(PAGES_DIR / "profiles.py", title="Profiles", icon=":material/speed:", url_path="profiles"),
        st.Page(PAGES_DIR / "recommend.py", title="Recommend", icon=":material/tune:", url_path="recommend"),
    ],
    "Verify": [
        st.Page(PAGES_DIR / "runs.py", title="Runs", icon=":material/monitoring:", url_path="runs"),
        st.Page(PAGES_DIR / "planner.py", title="Planner", icon=":material/calendar_month:", url_path="planner"),
        st.Page(PAGES_DIR / "export.py", title="Export", icon=":material/download:", url_path="export"),
        st.Page(
            PAGES_DIR / "calibration.py", title="Calibration", icon=":material/model_training:", url_path="calibration"
        ),
    ],
}

st.set_page_config(page_title="largestep", layout="wide")

home = resolve_home()
with st.sidebar:
    st.markdown("**largestep**")
    st.caption(f"Home: `{home.root}`")
    st.caption(f"Database: `{home.database}`")

st.navigation(PAGES).run()
