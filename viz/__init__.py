"""Plotly figures and OpenCV overlays, each a pure function of a run folder's data."""
