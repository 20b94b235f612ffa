"""Sampling a model's answers to problems with known answers, and grading them: what the rectification
pipeline (``spot_fast.rectify``) and the evaluation (``spot_fast.evaluate``) share.

- ``problems``: reading problems files (question, answer, id).
- ``settings``: the model and sampling options of a command that samples, and the record of the
  settings beside a log of samples (``claim``), so that one log never mixes two settings.
- ``generation``: the generators (Hugging Face or vLLM), every sample seeded by its own id, and the
  resumable sampling loop (``sample_missing``).
- ``answers``: the final answer of a response (its last ``\\boxed{}``) and whether it equals the
  ground truth (``grade``), with ``symbolic`` (math-verify) for what plain comparison cannot decide.

Reading and writing JSONL (``InputError``, ``AppendLog``) is ``spot_fast.jsonl``.
"""
