r"""The controlled task of ``spot_claims.py``: two skills whose truth a program knows, a character-level
tokenizer, a small Qwen3 model built from a config, and two programmatic Oracles.

**Reasoning skill: column addition.** "Compute 4821+379." is solved units first, one line per column,
each line the column's digits, the carry in, their sum and the result digits written so far::

    4821+379:
    1+9+0=10, 0
    2+7+1=10, 00
    8+3+1=12, 200
    4+0+1=5, 5200
    \boxed{5200}

The first line restates the problem in one of ``OPENINGS`` (surface variation a minimal edit must
keep). A column is added while either number has a digit left or a carry is pending, so the last
line's result is the sum, which the box repeats.

**Slips.** In the pre-training corpus a fraction of the solutions has one arithmetic slip: one
column's sum is off by one (``slipped_solution``), and every later line follows consistently from
the wrong sum (its carry and its digits), so the boxed answer is wrong. A model pre-trained on it
makes such slips at about that rate, and its own mistakes on top: its reasoning accuracy starts well
below 100% while the format is solid, which is what rectification needs.

**Old skill: digit reversal.** "Reverse the digits of 58213." is answered ``\boxed{31285}`` (digits
1-9, so no leading zero appears). It is in the pre-training corpus and nowhere in post-training: how
much of it survives post-training is the forgetting measure.

**Oracles** (``spot-fast-rectify correct --oracle-callable claims_task:NAME``):

- ``minimal_edit``: keeps the student's answer up to its first wrong line and rewrites from there
  (the wrong column and the lines that depend on it, then the box): the SPoT correction.
- ``rewrite``: writes its own full solution in another format (``REWRITE_STYLE``), ignoring the
  student's: the "direct" data of the paper's SFT baseline, off the student's distribution.

Every function here is a pure function of its arguments and a ``random.Random``; the experiment is
reproducible from its seed.
"""
import re
import string

from tokenizers import Tokenizer, decoders, models

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
OPENINGS = ("{a}+{b}:", "Add {a}+{b}.", "Sum of {a}, {b}:")
REWRITE_STYLE = "Adding the columns of {a} and {b} from the right: {steps}. The sum is \\boxed{{{total}}}."

END_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
START_TOKEN = "<|im_start|>"
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

_QUESTION = re.compile(r"Compute (\d+)\+(\d+)\.")


# ---- the reasoning skill -------------------------------------------------------------------------

def addition_question(a, b):
    return f"Compute {a}+{b}."


def columns(a, b, slip_at=None, slip=0):
    """The columns of ``a + b``, units first: (digit of a, digit of b, carry in, sum, result digits so
    far); with ``slip_at`` the sum of that column is off by ``slip`` and every later column follows
    from the written (wrong) sum."""
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    found, written, carry, column = [], "", 0, 0
    while column < max(len(digits_a), len(digits_b)) or carry:
        da = int(digits_a[column]) if column < len(digits_a) else 0
        db = int(digits_b[column]) if column < len(digits_b) else 0
        total = da + db + carry + (slip if column == slip_at else 0)
        written = str(total % 10) + written
        found.append((da, db, carry, total, written))
        carry, column = total // 10, column + 1
    return found


def addition_solution(a, b, opening=0, slip_at=None, slip=0):
    """The full solution text in the student's format (module docstring)."""
    found = columns(a, b, slip_at, slip)
    lines = [f"{da}+{db}+{carry}={total}, {written}" for da, db, carry, total, written in found]
    return "\n".join([OPENINGS[opening].format(a=a, b=b), *lines, f"\\boxed{{{number(found[-1][4])}}}"])


def number(digits):
    return digits.lstrip("0") or "0"


def slipped_solution(a, b, opening, rng):
    """A solution with one arithmetic slip (a column sum off by one, never below 0) that makes the
    final answer wrong."""
    count = len(columns(a, b))
    while True:
        slip_at, slip = rng.randrange(count), rng.choice((-1, 1))
        if all(total >= 0 for _, _, _, total, _ in columns(a, b, slip_at, slip)):
            return addition_solution(a, b, opening, slip_at, slip)


def random_addends(rng):
    """Two addends of 2 to 4 digits (the first of 3 or 4)."""
    return rng.randrange(100, 10000), rng.randrange(10, 10000)


# ---- the old skill -------------------------------------------------------------------------------

def reversal_question(number):
    return f"Reverse the digits of {number}."


def random_reversal(rng):
    """A number of 4 to 7 digits, each 1-9, and its digits reversed."""
    digits = "".join(rng.choice("123456789") for _ in range(rng.randint(4, 7)))
    return int(digits), int(digits[::-1])


# ---- the Oracles ---------------------------------------------------------------------------------

def _addends(question):
    match = _QUESTION.search(question)
    if match is None:
        raise ValueError(f"not an addition problem of this task: {question!r}")
    return int(match.group(1)), int(match.group(2))


def minimal_edit(question, wrong_answer, ground_truth):
    """The student's answer with its first wrong line and every line after it rewritten correctly.

    The correct solution in the student's opening (the first of ``OPENINGS`` when the student's first
    line is none of them) is compared line by line with the student's; the student's lines before the
    first difference are kept, the correct ones follow. A first line that is no opening makes the
    whole answer a rewrite, which ``verify`` drops for its change ratio."""
    a, b = _addends(question)
    student = wrong_answer.split("\n")
    openings = [opening.format(a=a, b=b) for opening in OPENINGS]
    right = addition_solution(a, b, openings.index(student[0]) if student[0] in openings else 0).split("\n")
    first_wrong = next((i for i, (s, r) in enumerate(zip(student, right)) if s != r), min(len(student), len(right)))
    return "\n".join(student[:first_wrong] + right[first_wrong:])


def rewrite(question, wrong_answer, ground_truth):
    """A correct solution of the Oracle's own, in ``REWRITE_STYLE`` (the student's text is ignored)."""
    a, b = _addends(question)
    found = columns(a, b)
    steps = [f"{da}+{db}+{carry} is {total}, write {total % 10} carry {total // 10}" for da, db, carry, total, _ in found]
    return REWRITE_STYLE.format(a=a, b=b, steps="; ".join(steps), total=number(found[-1][4]))


# ---- tokenizer and model -------------------------------------------------------------------------

def char_tokenizer():
    """A character-level Hugging Face tokenizer: one token per printable ASCII character or newline,
    plus the chat tokens; the chat template renders ``<|im_start|>role\\ncontent<|im_end|>\\n`` turns."""
    from transformers import PreTrainedTokenizerFast

    characters = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    specials = [PAD_TOKEN, START_TOKEN, END_TOKEN]
    vocab = {token: i for i, token in enumerate(specials + characters)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: every character is a token
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END_TOKEN, pad_token=PAD_TOKEN,
                                        additional_special_tokens=[START_TOKEN])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def model_config(tokenizer, hidden=128, layers=4):
    """A small Qwen3 configuration for ``tokenizer`` (about a million parameters at the defaults)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
        tie_word_embeddings=False, rope_theta=10000.0, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
