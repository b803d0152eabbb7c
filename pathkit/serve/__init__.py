"""pathkit models out of pathkit: export to transformers' LLaVA layout, and an OpenAI-compatible server."""
