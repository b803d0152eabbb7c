"""Evaluation: metrics, LLM judges, benchmark loaders, the evaluation runner.

- :mod:`pathkit.eval.metrics`: pathkit's closed accuracy (``closed_accuracy``) and the seeds' variants, open
  recall, exact match, BLEU-1..4, ROUGE-L, METEOR, zero-shot accuracy/macro-F1, bootstrap CIs.
- :mod:`pathkit.eval.loaders`: PathVQA, Quilt-VQA(-RED), PMC-VQA, WSI-Bench, SLAKE, VQA-RAD, MMMU H&M files ->
  evaluation questions.
- :mod:`pathkit.eval.answers`: resumable batched greedy answers in LLaVA's format.
- :mod:`pathkit.eval.score`: every metric with intervals, by answer type and category (``pathkit eval score``).
- :mod:`pathkit.eval.judges`: GPT relative score, WSI-Precision / WSI-Relevance through an OpenAI-compatible API.
- :mod:`pathkit.eval.visual_prompt`: red circles/boxes (Quilt-VQA-RED); :mod:`pathkit.eval.report`: notebook 09.
"""
