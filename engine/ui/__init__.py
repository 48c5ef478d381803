"""What each dashboard page shows, prepared without Streamlit: one module a page (named as its
file in ``app/sections``), ``widgets`` for what the pages share, the plotly figures in ``charts``,
and the self-contained HTML ``report``."""
