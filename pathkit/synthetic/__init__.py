"""Procedural data with ground truth: H&E-like tissue tiles, pyramidal slides and narrated videos."""
