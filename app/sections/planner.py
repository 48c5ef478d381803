"""Planner: being built."""

import streamlit as st

st.title("Planner")
st.info("This page is being built.")
