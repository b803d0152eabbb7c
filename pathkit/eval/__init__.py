"""Evaluation: metrics, LLM judges, benchmark loaders, the evaluation runner."""
