"""The Streamlit dashboard: ``main.py`` routes, one thin file a page in ``sections/``. Run by
``largestep dashboard``; nothing here is imported by the engine."""
