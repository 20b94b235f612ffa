"""SPoT data rectification: problems with known answers -> training pairs (x, y-, y+).

Four stages, each a module with one entry point and a command (``python -m spot_fast.rectify``):

- ``elicit.elicit``: sample the student model and grade each answer (``spot_fast.sampling``, shared
  with the evaluation), keep the wrong ones.
- ``correct.correct``: an Oracle (``oracle``: a chat model through ``chat_client``, or a Python
  function) rewrites each wrong answer with minimal edits; resumable, crash-safe (``spot_fast.jsonl.AppendLog``).
- ``verify.verify``: keep a correction only if its final answer is right and its change ratio over
  the trainer's tokens (``lcs``) is at most gamma.
- ``build.build``: write the pairs in the SPoT format the trainer reads, and the report (``report``).

The files of a work directory are listed in ``layout``.
"""
