"""Curation: text and image filters, embedding deduplication, LLaVA-format I/O and validation."""
