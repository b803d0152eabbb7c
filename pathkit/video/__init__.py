"""Narrated video: stable chunks, cursor detection and tracking, Quilt clustering, heatmaps, transcripts."""
