"""Plotly figures: pure functions of data in the shapes the store returns; none reads the
database or knows about Streamlit."""
