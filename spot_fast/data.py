"""Preference pairs: read rows (``data_sources``: JSONL, parquet, arrow, JSON, a ``save_to_disk`` folder,
a hub dataset), render with the chat template, tokenize, truncate, batch.

Accepted fields per row (docs/design.md section 5):
- prompt: ``question`` or ``prompt`` (a string, or a list of chat messages: ``role`` system, user or
  assistant, or tool where the chat template renders tool messages, and a string ``content``),
- chosen y+: ``gemini_corrected_answer``, ``chosen``, ``response`` or ``completion`` (a string, or
  messages ending with the assistant's),
- rejected y-: ``original_answer`` or ``rejected`` (same); read only when the objective compares two
  answers (``with_rejected``), so SFT-style data (prompt + response) needs none,
- ``behavior_logps`` (optional, read for PEAR only: ``with_behavior``): one log-prob per chosen
  completion token as this tokenizer splits it (in the chosen token layout), end token included; on
  every line or on none.
TRL's preference format is read as it is (``prompt``, ``chosen``, ``rejected``; plain strings or
conversational), including its implicit prompt (no ``prompt``: ``implicit_prompt`` takes the common
prefix of the answers, as ``trl.data_utils.maybe_extract_prompt`` does). Every source goes through
the same row checks and rendering, so the same rows give the same pairs whatever file holds them.

Two token layouts (``TokenLayout.render``):
- ``spot-fast`` (default): the prompt is rendered with the tokenizer's chat template and a generation
  prompt in Qwen3 non-thinking mode (the empty think block is part of the unscored prompt); each
  completion is the answer followed by one end token (not a second one when the answer already ends
  with it). Completions are truncated to fit ``max_length`` (their end is cut), never the prompt: a
  prompt that does not fit leaves no room for a completion, so its pair is skipped and counted.
- ``trl020``: the SPoT release's layout, as TRL 0.20's ``DPOTrainer`` builds it from chat messages.
  The prompt is rendered with the generation prompt and no ``enable_thinking`` argument; each
  completion is ``template(prompt + [answer as the assistant's message])[len(prompt text):]``
  tokenized, plus the end token, always appended (with Qwen3's template the completion starts with
  the empty think block and the end token comes twice). Then, as TRL does: the prompt keeps its last
  ``max_prompt_length`` tokens (0: all), and a sequence longer than ``max_length`` keeps its first
  (``keep_start``) or last (``keep_end``) ``max_length`` tokens (``fit_to_length`` says where one
  shared prompt cannot follow TRL exactly). Answers read from the SPoT field names
  (``SPOT_ANSWER_FIELDS``) lose a leading ``"\n\n"`` first, as the release's script strips them.
A malformed row raises ``DataError`` naming the file (or dataset) and the line (or row index). A UTF-8 byte-order mark at the start
of the file (as some editors write) is skipped. Batching is in ``batching.py``.
"""
import re
from dataclasses import dataclass

import torch

from . import data_sources
from .data_sources import DataError

PROMPT_FIELDS = ("question", "prompt")
CHOSEN_FIELDS = ("gemini_corrected_answer", "chosen", "response", "completion")
REJECTED_FIELDS = ("original_answer", "rejected")
SPOT_ANSWER_FIELDS = ("gemini_corrected_answer", "original_answer")  # trl020: a leading "\n\n" is stripped
BEHAVIOR_FIELD = "behavior_logps"
CHAT_ROLES = ("system", "user", "assistant")
RENDER_MODES = ("spot-fast", "trl020")
TRUNCATION_MODES = ("keep_end", "keep_start")


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
    truncated_prompts: int = 0      # trl020: prompts cut by max_prompt_length or keep_end
    prompt_cut_for_longer: int = 0  # trl020 keep_end: pairs whose shorter sequence got the longer one's prompt cut


def _field(record, names, where):
    for name in names:
        if name in record:
            return name, record[name]
    raise DataError(f"{where}: missing field: expected one of {', '.join(map(repr, names))}; "
                    f"found {', '.join(map(repr, record)) or 'no fields'}")


def chat_roles(tokenizer):
    """The message roles a row may use: system, user and assistant, and tool where the chat template
    names that role (renders tool messages)."""
    return CHAT_ROLES + ("tool",) if re.search(r"""["']tool["']""", tokenizer.chat_template or "") else CHAT_ROLES


def _as_messages(value, field, where, roles):
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not (isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)):
        raise DataError(f"{where}: field {field!r} must be a string or a non-empty list of "
                        f"{{'role', 'content'}} messages; got {type(value).__name__}")
    for number, message in enumerate(value, start=1):
        if message["role"] not in roles:
            raise DataError(f"{where}: field {field!r}, message {number}: role {message['role']!r} is not one of "
                            f"{list(roles)}")
        if not isinstance(message["content"], str):
            raise DataError(f"{where}: field {field!r}, message {number}: 'content' must be a string; got "
                            f"{type(message['content']).__name__}")
    return value


def _completion_text(value, field, where, roles):
    if isinstance(value, list):
        messages = _as_messages(value, field, where, roles)
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field {field!r}: the last message must be the assistant's")
        value = messages[-1]["content"]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be a string or a list of messages; got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {field!r} is empty")
    return value


def render_prompt(tokenizer, messages, render="spot-fast"):
    """The prompt text: chat template with the generation prompt; in the ``spot-fast`` layout in Qwen3
    non-thinking mode, in ``trl020`` without ``enable_thinking`` (as TRL 0.20 renders it)."""
    if render == "trl020":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)


def completion_ids(tokenizer, text):
    """``spot-fast`` layout: token ids of ``text`` followed by exactly one end token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids


def trl020_completion_ids(tokenizer, prompt_messages, prompt_text, answer, where):
    """``trl020`` layout: the text the template adds to ``prompt_text`` when the answer is appended as the
    assistant's message, tokenized, then the end token (appended even when the text ends with it)."""
    full = tokenizer.apply_chat_template(prompt_messages + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt_text):
        raise DataError(f"{where}: --render trl020: the chat template renders prompt + answer as text that does not "
                        f"start with the rendered prompt (the template re-renders earlier turns), so the completion "
                        f"cannot be cut off it; TRL 0.20 refuses such a row too")
    return tokenizer(full[len(prompt_text):], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@dataclass(frozen=True)
class TokenLayout:
    """How a row becomes token ids (module docstring); ``max_prompt_length`` and ``truncation_mode``
    are TRL 0.20's and apply to ``render="trl020"`` only."""
    render: str = "spot-fast"
    max_prompt_length: int = 0         # keep the last max_prompt_length prompt tokens; 0: all
    truncation_mode: str = "keep_end"  # what a sequence longer than max_length keeps: its last or first tokens

    def __post_init__(self):
        if self.render not in RENDER_MODES:
            raise ValueError(f"render {self.render!r} is not one of {list(RENDER_MODES)}")
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"truncation_mode {self.truncation_mode!r} is not one of {list(TRUNCATION_MODES)}")
        if self.max_prompt_length < 0:
            raise ValueError(f"max_prompt_length must be >= 0 (0: none); got {self.max_prompt_length}")
        if self.render == "spot-fast" and self.max_prompt_length:
            raise ValueError("max_prompt_length applies to render trl020 only: the spot-fast layout never "
                             "truncates prompts")


@dataclass
class Fit:
    """Where a pair is cut to fit ``max_length``: ``prompt_ids[prompt]`` and, for answer i,
    ``completion_ids[completions[i]]``."""
    prompt: slice
    completions: list
    cut_for_longer: bool = False  # keep_end gave the shorter sequence the longer one's (larger) prompt cut


def fit_to_length(prompt_length, completion_lengths, max_length, layout):
    """The cuts that make every prompt + completion at most ``max_length`` tokens, or None to skip the pair.

    ``spot-fast``: the prompt is never cut; each completion keeps its first ``max_length - prompt``
    tokens; a prompt of ``max_length`` tokens or more skips the pair.
    ``trl020``: first the prompt keeps its last ``max_prompt_length`` tokens (when set). Then
    ``keep_start`` is the rule above (TRL would keep a pair whose prompt fills ``max_length`` with
    no completion token scored; it is skipped here). ``keep_end``: a sequence of ``L > max_length``
    tokens loses its first ``L - max_length``. One prompt serves both answers, so it is cut for the
    longer sequence, and the shorter one sees that shorter prompt too (TRL would cut it less or not
    at all; ``cut_for_longer`` marks such pairs). The prompt keeps at least its last token (the
    context of the first scored token): where TRL's window would start inside the longer
    completion, that completion keeps its last ``max_length - 1`` tokens instead.
    Invariant: ``len(prompt) >= 1`` and ``len(prompt) + len(completion) <= max_length`` for each
    completion after the cuts.
    """
    start = 0
    if layout.render == "trl020" and layout.max_prompt_length:
        start = max(0, prompt_length - layout.max_prompt_length)
    if layout.render == "trl020" and layout.truncation_mode == "keep_end":
        kept = prompt_length - start
        excess = [max(0, kept + n - max_length) for n in completion_lengths]  # what TRL cuts off each sequence
        cut = min(max(excess), kept - 1)
        room = max_length - (kept - cut)
        return Fit(slice(start + cut, None), [slice(max(0, n - room), None) for n in completion_lengths],
                   cut_for_longer=min(min(excess), kept - 1) != cut)
    room = max_length - (prompt_length - start)
    if room < 1:
        return None
    return Fit(slice(start, None), [slice(0, room) for _ in completion_lengths])


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


def tokenize_pair(tokenizer, prompt_messages, answers, render, where):
    """``(prompt_ids, [completion ids of each answer])`` in the token layout ``render``."""
    prompt_text = render_prompt(tokenizer, prompt_messages, render)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if not prompt_ids:
        raise DataError(f"{where}: the chat template renders the prompt as no tokens")
    if render == "trl020":
        if prompt_messages[-1]["role"] != "user":
            raise DataError(f"{where}: --render trl020: the prompt's last message is the {prompt_messages[-1]['role']!r}'s; "
                            f"this layout takes prompts that end with the user's message")
        return prompt_ids, [trl020_completion_ids(tokenizer, prompt_messages, prompt_text, a, where) for a in answers]
    return prompt_ids, [completion_ids(tokenizer, a) for a in answers]


def implicit_prompt(record, where):
    """``record`` with TRL's implicit prompt made explicit (``trl.data_utils.maybe_extract_prompt``):
    where ``chosen`` and ``rejected`` hold the whole text or conversation and no prompt is given (or a
    string prompt beside conversational answers that share leading messages, which TRL replaces by
    them), the prompt is their longest common prefix (of characters, or of whole messages) and each
    answer keeps the rest. Rows in the SPoT release's fields (``question``) are taken as they are."""
    if "question" in record or not all(k in record for k in ("chosen", "rejected")):
        return record
    chosen, rejected = record["chosen"], record["rejected"]
    same_kind = ((isinstance(chosen, str) and isinstance(rejected, str))
                 or all(isinstance(v, list) and v and isinstance(v[0], dict) for v in (chosen, rejected)))
    if not same_kind or not all(chosen_or_rejected for chosen_or_rejected in (chosen, rejected)):
        return record  # left to the field checks, which name what is wrong
    from trl.data_utils import maybe_extract_prompt
    extracted = maybe_extract_prompt({k: record[k] for k in ("prompt", "chosen", "rejected") if k in record})
    if "prompt" in record and (extracted.get("prompt") is record["prompt"] or not extracted["prompt"]):
        return record  # TRL kept the prompt, or the answers share nothing that could replace it
    if not extracted["prompt"] or (isinstance(extracted["prompt"], str) and not extracted["prompt"].strip()):
        raise DataError(f"{where}: no prompt: there is no 'prompt' field and 'chosen' and 'rejected' share no "
                        f"leading {'messages' if isinstance(chosen, list) else 'text'} to take as the prompt "
                        f"(TRL's implicit prompt)")
    return {**record, **extracted}


def load_pairs(path, tokenizer, max_length, with_rejected=True, with_behavior=False, layout=TokenLayout(),
               split="train", config=""):
    """Tokenized pairs of a data source (``data_sources``: a JSONL, parquet, arrow or JSON file, a
    ``save_to_disk`` folder, a folder of data files or a hub dataset id, whose ``split`` and
    ``config`` are taken), in token layout ``layout``, and the counts of what was skipped or truncated.

    With ``with_rejected=False`` the rejected answer is neither required nor read (``rejected_ids`` None);
    with ``with_behavior=True`` the ``behavior_logps`` field is read and checked where present.
    """
    source_kind = data_sources.kind(path)  # DataError for a path that is not there
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos token; completions need an end token")
    name = data_sources.describe(path, split, config) if source_kind != "jsonl" else str(path)
    pairs, stats = [], DataStats()
    first_line_behavior = None  # (line, has the behaviour field): every line must agree with it
    roles = chat_roles(tokenizer)
    for where, line_number, record in data_sources.rows(path, split, config):
        record = implicit_prompt(record, where)
        prompt_field, prompt = _field(record, PROMPT_FIELDS, where)
        prompt_messages = _as_messages(prompt, prompt_field, where, roles)
        answers = []
        for fields in (CHOSEN_FIELDS, REJECTED_FIELDS) if with_rejected else (CHOSEN_FIELDS,):
            answer_field, answer = _field(record, fields, where)
            answer = _completion_text(answer, answer_field, where, roles)
            if layout.render == "trl020" and answer_field in SPOT_ANSWER_FIELDS:
                answer = answer.removeprefix("\n\n")
            answers.append(answer)
        prompt_ids, answer_ids = tokenize_pair(tokenizer, prompt_messages, answers, layout.render, where)
        behavior = None
        if with_behavior and BEHAVIOR_FIELD in record:
            behavior = _behavior_logps(record, len(answer_ids[0]), where)
        if first_line_behavior is None:
            first_line_behavior = (line_number, behavior is not None)
        elif first_line_behavior[1] != (behavior is not None):
            raise DataError(f"{where}: field {BEHAVIOR_FIELD!r} is {'present' if behavior is not None else 'missing'} "
                            f"here but {'present' if first_line_behavior[1] else 'missing'} on "
                            f"{'line' if source_kind == 'jsonl' else 'row'} {first_line_behavior[0]}; give it on "
                            f"every {'line' if source_kind == 'jsonl' else 'row'} or on none")
        fit = fit_to_length(len(prompt_ids), [len(ids) for ids in answer_ids], max_length, layout)
        if fit is None:
            stats.skipped_long_prompt += 1
            continue
        kept = [ids[cut] for ids, cut in zip(answer_ids, fit.completions)]
        stats.truncated_completions += sum(len(cut) < len(ids) for cut, ids in zip(kept, answer_ids))
        stats.truncated_prompts += int(fit.prompt.start > 0)
        stats.prompt_cut_for_longer += int(fit.cut_for_longer)
        if behavior is not None:
            behavior = behavior[fit.completions[0]]
        pairs.append(Pair(prompt_ids[fit.prompt], kept[0], kept[1] if with_rejected else None, line_number, behavior))
    stats.pairs = len(pairs)
    if not pairs:
        reason = f" ({stats.skipped_long_prompt} prompts longer than max_length {max_length})" if stats.skipped_long_prompt else ""
        raise DataError(f"{name}: no usable pairs{reason}")
    return pairs, stats
