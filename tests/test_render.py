"""Token layouts (``--render``): ``trl020`` against TRL 0.20's processing written out by hand, and the
default ``spot-fast`` layout against its own rule, on a Qwen3-style chat template.

TRL is not installed; ``trl020_sequences`` below is its documented processing for conversational
preference rows (``maybe_apply_chat_template`` -> ``DPOTrainer.tokenize_row`` -> the truncation of
``concatenated_forward``), step by step, with the rows turned into chat messages as the SPoT release
does (a string becomes the user's or the assistant's message).
"""
import json

import pytest

from spot_fast import train as train_module
from spot_fast.config import RESUME_SAFE, TrainConfig, parse_config
from spot_fast.data import SPOT_ANSWER_FIELDS, DataError, TokenLayout, load_pairs
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_tokenizer

# Modelled on Qwen3's template: the last assistant turn gets the empty think block before its content;
# the generation prompt gets it only with enable_thinking=False (non-thinking mode).
QWEN3_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

SPOT_ROW = {"question": "Sam has 12 apples and eats 5. How many are left? Put the answer in \\boxed{}.",
            "original_answer": "12 - 5 = 8.\nThe answer is \\boxed{8}.",
            "gemini_corrected_answer": "12 - 5 = 7.\nThe answer is \\boxed{7}."}
TRL_MESSAGES_ROW = {"prompt": [{"role": "system", "content": "You are a careful tutor."},
                               {"role": "user", "content": "What is 3 * 4?"},
                               {"role": "assistant", "content": "Do you want steps?"},
                               {"role": "user", "content": "Yes, with steps please."}],
                    "chosen": [{"role": "assistant", "content": "3 * 4 = 3 + 3 + 3 + 3 = 12. The answer is 12."}],
                    "rejected": [{"role": "assistant", "content": "3 * 4 = 3 + 4 = 7, so 7."}]}
TRL_STRING_ROW = {"prompt": "Name a prime number above 10.", "chosen": "11 is prime.", "rejected": "15 is prime."}
ROWS = [SPOT_ROW, TRL_MESSAGES_ROW, TRL_STRING_ROW]


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    new_tokens = [t for t in ("<|im_start|>", "<|im_end|>") if t not in tokenizer.get_vocab()]
    if new_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": new_tokens})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = QWEN3_STYLE_TEMPLATE
    return tokenizer


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def as_messages(value, role):
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def release_answer(row, spot_field, trl_field):
    """An answer as the SPoT release's script reads it: its own field names lose a leading "\n\n"."""
    if spot_field in row:
        return row[spot_field].removeprefix("\n\n")
    return row[trl_field]


def trl020_sequences(tokenizer, row, max_length=None, max_prompt_length=None, truncation_mode="keep_end"):
    """TRL 0.20 by hand: ``[(input_ids, loss_mask)]`` of the chosen and the rejected sequence."""
    prompt = as_messages(row.get("prompt", row.get("question")), "user")
    answers = [as_messages(release_answer(row, "gemini_corrected_answer", "chosen"), "assistant"),
               as_messages(release_answer(row, "original_answer", "rejected"), "assistant")]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[-max_prompt_length:]
    sequences = []
    for answer in answers:
        full_text = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        completion = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids, mask = prompt_ids + completion, [0] * len(prompt_ids) + [1] * len(completion)
        if max_length is not None and len(ids) > max_length:
            window = slice(-max_length, None) if truncation_mode == "keep_end" else slice(0, max_length)
            ids, mask = ids[window], mask[window]
        sequences.append((ids, [0] + mask[1:]))  # the first token of a sequence is never a label
    return sequences


def sequences_of(pair):
    return [(pair.prompt_ids + ids, [0] * len(pair.prompt_ids) + [1] * len(ids)) for ids in (pair.chosen_ids, pair.rejected_ids)]


def test_trl020_equals_trl_processing_for_spot_and_trl_fields(tokenizer, tmp_path):
    """SPoT fields, TRL fields with message lists (system prompt, earlier turns) and with strings:
    the same ids and scored tokens as TRL 0.20, the think block and two end tokens in the completion."""
    path = write_rows(tmp_path / "rows.jsonl", ROWS)
    pairs, stats = load_pairs(path, tokenizer, 8192, layout=TokenLayout("trl020"))
    assert [p.line for p in pairs] == [1, 2, 3] and stats.truncated_prompts == stats.truncated_completions == 0
    for pair, row in zip(pairs, ROWS):
        assert sequences_of(pair) == trl020_sequences(tokenizer, row)
        think = tokenizer("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
        end = tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for completion in (pair.chosen_ids, pair.rejected_ids):
            assert completion[:len(think)] == think and completion[-len(end):] == end
        assert tokenizer.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")


def test_spot_fast_layout_is_unchanged(tokenizer, tmp_path):
    """The default: think block in the prompt (non-thinking mode), one end token, completions cut at
    their end, prompts never cut (a pair whose prompt does not fit is skipped and counted)."""
    path = write_rows(tmp_path / "rows.jsonl", ROWS)
    prompt_lengths = sorted(len(p.prompt_ids) for p in load_pairs(path, tokenizer, 8192)[0])
    for max_length in (8192, prompt_lengths[-1] + 10, prompt_lengths[0] + 5):
        pairs, stats = load_pairs(path, tokenizer, max_length)
        kept = truncated = 0
        for row in ROWS:
            prompt = as_messages(row.get("prompt", row.get("question")), "user")
            prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, enable_thinking=False)
            assert prompt_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
            prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            if len(prompt_ids) >= max_length:
                continue
            completions = []
            for answer in (row.get("chosen", row.get("gemini_corrected_answer")), row.get("rejected", row.get("original_answer"))):
                text = answer if isinstance(answer, str) else answer[-1]["content"]
                completions.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
            room = max_length - len(prompt_ids)
            truncated += sum(len(c) > room for c in completions)
            assert (pairs[kept].prompt_ids, pairs[kept].chosen_ids, pairs[kept].rejected_ids) == \
                   (prompt_ids, *(c[:room] for c in completions))
            kept += 1
        assert stats.pairs == kept and stats.skipped_long_prompt == len(ROWS) - kept
        assert stats.truncated_completions == truncated and (truncated > 0) == (max_length < 8192)
        assert stats.truncated_prompts == stats.prompt_cut_for_longer == 0
    assert kept == 2  # the last max_length skipped the pair with the longest prompt
    # a completion that already ends with the end token gets no second one
    one_end = write_rows(tmp_path / "end.jsonl", [{"prompt": "Hi", "chosen": "Hello<|im_end|>", "rejected": "Bye"}])
    assert load_pairs(one_end, tokenizer, 8192)[0][0].chosen_ids == tokenizer("Hello<|im_end|>", add_special_tokens=False)["input_ids"]


def test_trl020_max_prompt_length_keeps_the_end_of_the_prompt(tokenizer, tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", ROWS)
    pairs, stats = load_pairs(path, tokenizer, 8192, layout=TokenLayout("trl020", max_prompt_length=9))
    for pair, row in zip(pairs, ROWS):
        assert len(pair.prompt_ids) == 9 and sequences_of(pair) == trl020_sequences(tokenizer, row, max_prompt_length=9)
    assert stats.truncated_prompts == 3 and stats.truncated_completions == 0
    shortest = min(len(p.prompt_ids) for p in load_pairs(path, tokenizer, 8192, layout=TokenLayout("trl020"))[0])
    stats = load_pairs(path, tokenizer, 8192, layout=TokenLayout("trl020", max_prompt_length=shortest - 1))[1]
    assert stats.truncated_prompts == 3  # the shortest prompt lost one token


def test_trl020_keep_start_cuts_completion_ends_and_skips_prompts_that_fill_max_length(tokenizer, tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", ROWS)
    layout = TokenLayout("trl020", truncation_mode="keep_start")
    prompt_lengths = [len(p.prompt_ids) for p in load_pairs(path, tokenizer, 8192, layout=layout)[0]]
    max_length = sorted(prompt_lengths)[1] + 3  # the longest prompt fills it, the others leave room
    pairs, stats = load_pairs(path, tokenizer, max_length, layout=layout)
    kept_rows = [row for row, n in zip(ROWS, prompt_lengths) if n < max_length]
    assert len(pairs) == stats.pairs == len(kept_rows) == 2 and stats.skipped_long_prompt == 1
    for pair, row in zip(pairs, kept_rows):
        assert sequences_of(pair) == trl020_sequences(tokenizer, row, max_length, truncation_mode="keep_start")
        assert len(pair.prompt_ids) + len(pair.chosen_ids) <= max_length
    assert stats.truncated_completions == 4 and stats.truncated_prompts == 0


def test_trl020_keep_end_cuts_the_start_of_the_prompt(tokenizer, tmp_path):
    """Two answers of equal length: the pair is exactly TRL's. Of unequal length: the longer sequence is
    TRL's, the shorter one keeps its whole completion but sees the prompt cut for the longer one."""
    equal = {"prompt": "What is 2 + 5?", "chosen": "The sum is 7.", "rejected": "The sum is 8."}
    path = write_rows(tmp_path / "rows.jsonl", [equal, TRL_MESSAGES_ROW])
    full = load_pairs(path, tokenizer, 8192, layout=TokenLayout("trl020"))[0]
    assert len(full[0].chosen_ids) == len(full[0].rejected_ids)
    assert len(full[1].chosen_ids) != len(full[1].rejected_ids)
    max_length = min(len(p.prompt_ids) + len(p.chosen_ids) for p in full) - 3  # both pairs are cut
    pairs, stats = load_pairs(path, tokenizer, max_length, layout=TokenLayout("trl020", truncation_mode="keep_end"))
    assert sequences_of(pairs[0]) == trl020_sequences(tokenizer, equal, max_length)

    ours, trl = sequences_of(pairs[1]), trl020_sequences(tokenizer, TRL_MESSAGES_ROW, max_length)
    longer = max((0, 1), key=lambda i: len(full[1].prompt_ids) + len((full[1].chosen_ids, full[1].rejected_ids)[i]))
    shorter = 1 - longer
    assert ours[longer] == trl[longer] and len(ours[longer][0]) == max_length
    extra_cut = len(trl[shorter][0]) - len(ours[shorter][0])
    assert extra_cut > 0
    assert ours[shorter][0] == trl[shorter][0][extra_cut:] and ours[shorter][1][1:] == trl[shorter][1][extra_cut + 1:]
    assert stats.truncated_prompts == 2 and stats.prompt_cut_for_longer == 1 and stats.truncated_completions == 0


def test_trl020_keep_end_keeps_one_prompt_token_when_a_completion_fills_max_length(tokenizer, tmp_path):
    row = {"prompt": "Count.", "chosen": "one two three four five six seven eight nine ten eleven twelve", "rejected": "one"}
    path = write_rows(tmp_path / "rows.jsonl", [row])
    whole = load_pairs(path, tokenizer, 8192, layout=TokenLayout("trl020"))[0][0]
    max_length = len(whole.rejected_ids) + 3
    assert len(whole.chosen_ids) > max_length
    (pair,), stats = load_pairs(path, tokenizer, max_length, layout=TokenLayout("trl020"))
    assert pair.prompt_ids == whole.prompt_ids[-1:]
    assert pair.chosen_ids == whole.chosen_ids[-(max_length - 1):] and pair.rejected_ids == whole.rejected_ids
    assert stats.truncated_completions == 1 and stats.truncated_prompts == 1 and stats.prompt_cut_for_longer == 1


def test_trl020_behaviour_logps_follow_the_kept_completion_tokens(tokenizer, tmp_path):
    row = {"prompt": "Count.", "response": "one two three four five"}
    layout = TokenLayout("trl020")
    whole = load_pairs(write_rows(tmp_path / "plain.jsonl", [row]), tokenizer, 8192, with_rejected=False, layout=layout)[0][0]
    logps = [-0.01 * (i + 1) for i in range(len(whole.chosen_ids))]
    path = write_rows(tmp_path / "rows.jsonl", [{**row, "behavior_logps": logps}])
    keep_end = load_pairs(path, tokenizer, 4, with_rejected=False, with_behavior=True, layout=layout)[0][0]
    keep_start = load_pairs(path, tokenizer, len(whole.prompt_ids) + 3, with_rejected=False, with_behavior=True,
                            layout=TokenLayout("trl020", truncation_mode="keep_start"))[0][0]
    assert keep_end.chosen_ids == whole.chosen_ids[-3:] and keep_end.behavior_logps.tolist() == pytest.approx(logps[-3:])
    assert keep_start.chosen_ids == whole.chosen_ids[:3] and keep_start.behavior_logps.tolist() == pytest.approx(logps[:3])


def test_trl020_refuses_templates_that_re_render_earlier_turns(tokenizer, tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", [TRL_STRING_ROW, TRL_STRING_ROW])
    marks_last_turn = load_tokenizer(BUILTIN_MODEL)
    marks_last_turn.chat_template = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + ('*' if loop.last else '') + '\\n' "
                                     "+ m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
                                     "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    with pytest.raises(DataError, match=r"rows\.jsonl:1: --render trl020: .*does not start with the rendered prompt"):
        load_pairs(path, marks_last_turn, 8192, layout=TokenLayout("trl020"))
    assert len(load_pairs(path, marks_last_turn, 8192)[0]) == 2  # the spot-fast layout renders the prompt alone
    ends_with_assistant = {**TRL_MESSAGES_ROW, "prompt": TRL_MESSAGES_ROW["prompt"][:3]}
    with pytest.raises(DataError, match=r"rows\.jsonl:2: --render trl020: the prompt's last message is the 'assistant''s"):
        load_pairs(write_rows(path, [TRL_STRING_ROW, ends_with_assistant]), tokenizer, 8192, layout=TokenLayout("trl020"))


def test_trl020_strips_a_leading_blank_line_from_answers_in_the_spot_field_names(tokenizer, tmp_path):
    """The release's script removes one leading "\n\n" from ``gemini_corrected_answer`` and
    ``original_answer`` before TRL sees them: those answers are scored without it, as TRL scored
    them; the same text under TRL's field names, or in the spot-fast layout, keeps it."""
    assert SPOT_ANSWER_FIELDS == ("gemini_corrected_answer", "original_answer")
    padded = {**SPOT_ROW, "gemini_corrected_answer": "\n\n" + SPOT_ROW["gemini_corrected_answer"],
              "original_answer": "\n\n\n" + SPOT_ROW["original_answer"]}  # one "\n\n" goes, the third stays
    trl_fields = {"prompt": padded["question"], "chosen": padded["gemini_corrected_answer"],
                  "rejected": padded["original_answer"]}
    path = write_rows(tmp_path / "rows.jsonl", [padded, SPOT_ROW, trl_fields])
    stripped, plain, kept = load_pairs(path, tokenizer, 8192, layout=TokenLayout("trl020"))[0]
    assert stripped.chosen_ids == plain.chosen_ids, "trl020: gemini_corrected_answer's leading \\n\\n was scored"
    assert tokenizer.decode(stripped.rejected_ids).count("\n") == tokenizer.decode(plain.rejected_ids).count("\n") + 1, \
        "trl020: original_answer must lose exactly one leading \\n\\n"
    assert sequences_of(stripped) == trl020_sequences(tokenizer, padded)
    assert kept.chosen_ids != stripped.chosen_ids and kept.rejected_ids != stripped.rejected_ids
    spot_fast, spot_fast_plain = load_pairs(write_rows(path, [padded, SPOT_ROW]), tokenizer, 8192)[0]
    assert spot_fast.chosen_ids != spot_fast_plain.chosen_ids


def test_trl020_keeps_the_last_half_of_max_length_of_a_prompt_unless_told(tmp_path):
    """Without --max-prompt-length, trl020 runs with the release's max_prompt_length = max_length // 2:
    a 5,000-token prompt at max length 8192 keeps its last 4096 tokens; an explicit value wins, and the
    spot-fast layout never cuts a prompt."""
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    question = " ".join(f"n{i}" for i in range(1150))  # 5,006 prompt tokens
    row = {"question": question, "original_answer": "wrong", "gemini_corrected_answer": "right"}
    path = write_rows(tmp_path / "long.jsonl", [row])
    whole = load_pairs(path, tokenizer, 8192, layout=TokenLayout("trl020"))[0][0].prompt_ids
    assert 5000 <= len(whole) < 8192 - 20, len(whole)  # 20: room for the answers, so only max_prompt_length cuts
    config = parse_config(["--render", "trl020", "--data", str(path)])
    assert config.token_layout() == TokenLayout("trl020", 4096)
    [pair] = train_module.read_data(config, tokenizer)[0]
    assert pair.prompt_ids == whole[-4096:]
    assert parse_config(["--render", "trl020", "--max-prompt-length", "100"]).token_layout().max_prompt_length == 100
    assert parse_config(["--render", "trl020", "--max-length", "1001"]).token_layout().max_prompt_length == 500
    assert len(load_pairs(path, tokenizer, 8192, layout=parse_config([]).token_layout())[0][0].prompt_ids) > 5000


def test_render_options_reach_the_data_and_change_the_computation(tmp_path):
    config = parse_config(["--render", "trl020", "--max-prompt-length", "7", "--truncation-mode", "keep_start"])
    assert config.token_layout() == TokenLayout("trl020", 7, "keep_start")
    assert TrainConfig().token_layout() == TokenLayout("spot-fast", 0, "keep_end")
    assert not {"render", "max_prompt_length", "truncation_mode"} & set(RESUME_SAFE)
    for argv, message in ((["--max-prompt-length", "4"], "applies to render trl020 only"),
                          (["--render", "trl020", "--max-prompt-length", "-1"], "--max-prompt-length must be >= 0")):
        with pytest.raises(SystemExit, match=message):
            parse_config(argv)
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    config = TrainConfig(data=str(ASSETS / "pairs.jsonl"), eval_data=str(ASSETS / "eval_pairs.jsonl"),
                         retain_data=str(ASSETS / "retain.jsonl"), render="trl020", max_prompt_length=7)
    pairs, _, eval_pairs, retain_pairs = train_module.read_data(config, tokenizer)
    for got, path, with_rejected in ((pairs, "pairs.jsonl", True), (eval_pairs, "eval_pairs.jsonl", True),
                                     (retain_pairs, "retain.jsonl", False)):
        expected = load_pairs(ASSETS / path, tokenizer, config.max_length, with_rejected, layout=config.token_layout())[0]
        assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in got] == \
               [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in expected]
        assert all(len(p.prompt_ids) == 7 for p in got)
