"""Evaluation: ``spot-fast-eval`` (``python -m spot_fast.evaluate``), the SPoT paper's protocol.

Each model answers each benchmark problem k times with the generation code it shares with the
rectification pipeline (``spot_fast.sampling.generation``: Hugging Face or vLLM; non-thinking mode,
temperature 0.7, top-p 0.8 by default), every answer is graded by the same checker
(``spot_fast.sampling.answers``; multiple-choice answers by letter after a seeded per-repetition
reshuffle of the choices), and each benchmark gets avg@k +- std across the k repetitions, unbiased
pass@k, mean response length and truncation rate.

- ``benchmark_files``: reading benchmark JSONL, the prompt and target of each repetition, grading.
- ``scores``: avg@k, std, pass@k and the rest from graded samples.
- ``run``: the models to evaluate (``--model``, ``--checkpoints``) and the resumable loop per model.
- ``results``: ``results.json``, ``results.md`` and the plots.
"""
