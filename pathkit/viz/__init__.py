"""Figures (matplotlib), napari viewers and ipywidgets chat."""
