"""Whole-slide images: openslide reading, tissue mask, tiling at a target mpp, patch datasets, HDF5 features."""
