"""Regenerates the bundled demo assets under spot_fast/assets/ (deterministic; run from the repo root).

- ``pairs.jsonl`` / ``eval_pairs.jsonl``: SPoT-format training pairs (question, original_answer = a
  solution with one arithmetic slip carried to the end, gemini_corrected_answer = the same text with
  the minimal edits that make it right).
- ``problems.jsonl``: problems with ground-truth answers, input of the rectification pipeline.
- ``retain.jsonl``: prompt/response pairs for the forgetting signals.
- ``tokenizer/``: a byte-level BPE tokenizer trained on the above, with a Qwen3-style chat template.
"""
import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ASSETS = Path("spot_fast/assets")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
ITEMS = ["apples", "books", "coins", "marbles", "stickers", "pencils", "cards", "shells"]
NAMES = ["Tom", "Ana", "Li", "Sam", "Mia", "Omar", "Zoe", "Raj"]


def problem(rng):
    """A two-step word problem; returns (question, steps) with steps as (text_template, value) pairs."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(12, 89), rng.randint(11, 79), rng.randint(2, 9)
    if rng.random() < 0.5:
        question = (f"{name} has {a} {item} and gets {b} more. Then {name} shares them equally among "
                    f"{c} friends, keeping the remainder. How many {item} does each friend get?")
        first = a + b
        ops = [(f"{a} + {b}", first, "{name} now has {expr} = {value} {item}."),
               (f"{first} // {c}", first // c, "Each friend gets {expr} = {value} {item}.")]
    else:
        question = (f"{name} buys {c} boxes with {a} {item} each and then loses {b} of them. "
                    f"How many {item} are left?")
        first = a * c
        ops = [(f"{c} * {a}", first, "The boxes hold {expr} = {value} {item}."),
               (f"{first} - {b}", first - b, "After losing {b} there are {expr} = {value} {item} left.")]
    return question + " Put the final answer in \\boxed{}.", name, item, b, ops


def solution(name, item, b, ops, slip=None):
    """Renders the steps; with ``slip`` (an offset) the first result is wrong and the error carries on."""
    lines, carried = [], None
    for index, (expr, value, template) in enumerate(ops):
        if index == 1 and carried is not None:
            left, op, right = expr.split(" ")
            expr = f"{carried} {op} {right}"
            value = carried // int(right) if op == "//" else carried - int(right) if op == "-" else value
        if index == 0 and slip:
            value += slip
            carried = value
        lines.append(template.format(name=name, item=item, b=b, expr=expr.replace("//", "/"), value=value))
        final = value
    lines.append(f"The answer is \\boxed{{{final}}}.")
    return "\n".join(lines), final


def examples(rng, count):
    for index in range(count):
        question, name, item, b, ops = problem(rng)
        right, answer = solution(name, item, b, ops)
        wrong, wrong_answer = answer, answer
        while wrong_answer == answer:  # the slip must change the final answer
            wrong, wrong_answer = solution(name, item, b, ops, slip=rng.choice([-10, -2, -1, 1, 2, 10]))
        yield {"id": f"demo-{index}", "question": question, "answer": str(answer),
               "original_answer": wrong, "gemini_corrected_answer": right}


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    rng = random.Random(0)
    rows = list(examples(rng, 340))
    train, held_out = rows[:240], rows[240:]
    pair_fields = ("id", "question", "original_answer", "gemini_corrected_answer")
    write_jsonl(ASSETS / "pairs.jsonl", [{k: r[k] for k in pair_fields} for r in train])
    write_jsonl(ASSETS / "eval_pairs.jsonl", [{k: r[k] for k in pair_fields} for r in held_out[:40]])
    write_jsonl(ASSETS / "problems.jsonl", [{"id": r["id"], "question": r["question"], "answer": r["answer"]}
                                           for r in held_out[40:64]])
    write_jsonl(ASSETS / "retain.jsonl", [{"prompt": r["question"], "response": r["gemini_corrected_answer"]}
                                         for r in held_out[64:96]])

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=640, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [text for r in rows for text in (r["question"], r["original_answer"], r["gemini_corrected_answer"])]
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(ASSETS / "tokenizer")


if __name__ == "__main__":
    main()
