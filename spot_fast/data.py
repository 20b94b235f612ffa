"""Preference pairs: read JSONL, render with the chat template, tokenize, truncate, batch.

Accepted fields per line (DESIGN.md section 5):
- prompt: ``question`` or ``prompt`` (a string, or a list of chat messages),
- chosen y+: ``gemini_corrected_answer``, ``chosen``, ``response`` or ``completion`` (a string, or
  messages ending with the assistant's),
- rejected y-: ``original_answer`` or ``rejected`` (same); read only when the objective compares two
  answers (``with_rejected``), so SFT-style data (prompt + response) needs none,
- ``behavior_logps`` (optional, read for PEAR only: ``with_behavior``): one log-prob per chosen
  completion token as this tokenizer splits it, end token included; on every line or on none.
The prompt is rendered with the tokenizer's chat template and a generation prompt (Qwen3 non-thinking
mode inserts the empty think block); each completion is the answer followed by one end token (not a
second one when the answer already ends with it). Completions are truncated to fit ``max_length``,
never the prompt: a prompt that does not fit leaves no room for a completion, so its pair is skipped
and counted. A malformed line raises ``DataError`` naming the file and line. Batching is in
``batching.py``.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

PROMPT_FIELDS = ("question", "prompt")
CHOSEN_FIELDS = ("gemini_corrected_answer", "chosen", "response", "completion")
REJECTED_FIELDS = ("original_answer", "rejected")
BEHAVIOR_FIELD = "behavior_logps"


class DataError(ValueError):
    """Bad training data; the message names the file and line."""


@dataclass
class Pair:
    prompt_ids: list
    chosen_ids: list
    rejected_ids: list          # None when the data is read without rejected answers
    line: int
    behavior_logps: torch.Tensor = None  # [len(chosen_ids)] fp32, when the data or a behaviour model supplies them


@dataclass
class DataStats:
    pairs: int = 0
    skipped_long_prompt: int = 0
    truncated_completions: int = 0


def _field(record, names, where):
    for name in names:
        if name in record:
            return name, record[name]
    raise DataError(f"{where}: missing field: expected one of {', '.join(map(repr, names))}; "
                    f"found {', '.join(map(repr, record)) or 'no fields'}")


def _as_messages(value, field, where):
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return value
    raise DataError(f"{where}: field {field!r} must be a string or a non-empty list of "
                    f"{{'role', 'content'}} messages; got {type(value).__name__}")


def _completion_text(value, field, where):
    if isinstance(value, list):
        messages = _as_messages(value, field, where)
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field {field!r}: the last message must be the assistant's")
        value = messages[-1]["content"]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be a string or a list of messages; got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {field!r} is empty")
    return value


def render_prompt(tokenizer, messages):
    """The prompt text: chat template with the generation prompt, Qwen3 non-thinking mode."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)


def completion_ids(tokenizer, text):
    """Token ids of ``text`` followed by exactly one end token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids


def _behavior_logps(record, num_tokens, where):
    values = record[BEHAVIOR_FIELD]
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DataError(f"{where}: field {BEHAVIOR_FIELD!r} must be a list of numbers")
    if not all(-float("inf") < v <= 0 for v in values):
        raise DataError(f"{where}: field {BEHAVIOR_FIELD!r} must hold finite log-probs <= 0")
    if len(values) != num_tokens:
        raise DataError(f"{where}: field {BEHAVIOR_FIELD!r} has {len(values)} values but the chosen completion has "
                        f"{num_tokens} tokens (end token included) under this tokenizer")
    return torch.tensor(values, dtype=torch.float32)


def load_pairs(path, tokenizer, max_length, with_rejected=True, with_behavior=False):
    """Tokenized pairs of a JSONL file and the counts of what was skipped or truncated.

    With ``with_rejected=False`` the rejected answer is neither required nor read (``rejected_ids`` None);
    with ``with_behavior=True`` the ``behavior_logps`` field is read and checked where present.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos token; completions need an end token")
    pairs, stats = [], DataStats()
    first_line_behavior = None  # (line, has the behaviour field): every line must agree with it
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{where}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                                f"re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: invalid JSON: {error.msg} at column {error.colno}") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            prompt_field, prompt = _field(record, PROMPT_FIELDS, where)
            chosen_field, chosen = _field(record, CHOSEN_FIELDS, where)
            prompt_ids = tokenizer(render_prompt(tokenizer, _as_messages(prompt, prompt_field, where)),
                                   add_special_tokens=False)["input_ids"]
            chosen_ids = completion_ids(tokenizer, _completion_text(chosen, chosen_field, where))
            rejected_ids = None
            if with_rejected:
                rejected_field, rejected = _field(record, REJECTED_FIELDS, where)
                rejected_ids = completion_ids(tokenizer, _completion_text(rejected, rejected_field, where))
            behavior = None
            if with_behavior and BEHAVIOR_FIELD in record:
                behavior = _behavior_logps(record, len(chosen_ids), where)
            if first_line_behavior is None:
                first_line_behavior = (line_number, behavior is not None)
            elif first_line_behavior[1] != (behavior is not None):
                raise DataError(f"{where}: field {BEHAVIOR_FIELD!r} is {'present' if behavior is not None else 'missing'} "
                                f"here but {'present' if first_line_behavior[1] else 'missing'} on line "
                                f"{first_line_behavior[0]}; give it on every line or on none")
            room = max_length - len(prompt_ids)
            if room < 1:
                stats.skipped_long_prompt += 1
                continue
            for ids in (chosen_ids, rejected_ids):
                if ids is not None and len(ids) > room:
                    del ids[room:]
                    stats.truncated_completions += 1
            if behavior is not None:
                behavior = behavior[:room]
            pairs.append(Pair(prompt_ids, chosen_ids, rejected_ids, line_number, behavior))
    stats.pairs = len(pairs)
    if not pairs:
        reason = f" ({stats.skipped_long_prompt} prompts longer than max_length {max_length})" if stats.skipped_long_prompt else ""
        raise DataError(f"{path}: no usable pairs{reason}")
    return pairs, stats
