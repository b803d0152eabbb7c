"""Instruction data: prompt library, OpenAI-compatible client (cache, retry, resume), generation pipelines."""
