"""Data in the layouts the field publishes it (PathVQA, PMC-VQA, Quilt-VQA, WSI-Bench, SlideBench, LLaVA JSON),
imported into pathkit's files: questions JSONL, images and a LLaVA train file."""
