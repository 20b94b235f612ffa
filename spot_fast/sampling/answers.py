r"""Final-answer extraction and equivalence for math problems.

``grade(text, truth)`` takes the content of the last ``\boxed{...}`` in ``text`` and compares it with
the ground truth in three steps, stopping at the first that decides:

1. **normalized strings**: ``normalize`` removes what does not change the value (``$``, spaces,
   ``\left``/``\right``, spacing commands, ``\text{}`` wrappers, trailing units and ``.``, degrees,
   percent signs, thousands separators, a leading ``x =``) and rewrites ``\dfrac``/``\tfrac`` and
   brace-less ``\frac12`` / ``\sqrt2`` into one spelling. Equal strings are equal answers.
2. **exact numbers**: when both sides are plain numbers (integers, decimals, scientific notation,
   ``a/b``, ``\frac{a}{b}``) they are compared as exact fractions, and this decides: ``0.5 == \frac12``,
   ``7 != 6``.
3. **symbolic**: otherwise math-verify decides (``symbolic.equivalent``).

Answers made of several comma-separated items are split at top-level commas and compared item by
item with the steps above, according to what their brackets say:

- **ordered** (a tuple ``(1, 2)``, an interval ``[0, 1)``, any other bracket pair): the same brackets,
  the same number of items, equal item by item in order. ``(1,2) != (2,1)``, ``[0,1) != (0,1]``.
- **unordered** (a set ``\{1, 2\}``, or a bare list ``2, -3``): equal when the items of the two sides
  can be paired one to one into equal items, in any order. Policy for bare lists: a bare
  comma-separated list is how benchmarks write "all solutions" (MATH: "enter all the solutions,
  separated by commas"), so ``2, -3 == -3, 2``, and a bare list equals the set of the same items.
  Multiplicity counts (``2, 2 != 2``): a repeated item is not what a right answer looks like.
  Equality of items is an equivalence relation, so pairing each item with the first unused equal
  item of the other side finds a one-to-one pairing whenever one exists.

The comparison errs towards "not equal": a wrong "equal" would let a wrong correction into training.
"""
import re
from fractions import Fraction

from spot_fast.sampling import symbolic
from spot_fast.sampling.symbolic import brace_group

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_ARGUMENT = re.compile(r"[^\s$]+")


def last_boxed_span(text):
    r"""(start, end) of the content of the last ``\boxed`` (or ``\fbox``) in ``text``; None if none.

    The content is a brace group with nested braces matched (``\boxed{\frac{1}{2}}``), or in the
    brace-less form ``\boxed 5`` the text up to the next space or ``$``. If the last box is never
    closed (a truncated answer) the result is None: an earlier box is not the final answer.
    """
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    command_end = matches[-1].end()
    start = command_end
    while start < len(text) and text[start].isspace():
        start += 1
    if text.startswith("{", start):
        group = brace_group(text, start)
        return None if group is None else (start + 1, group[1] - 1)
    bare = _BARE_ARGUMENT.match(text, start)
    return (start, bare.end()) if bare and start > command_end else None


def last_boxed(text):
    """The final answer of ``text``: the stripped content of its last box, or None."""
    span = last_boxed_span(text)
    return None if span is None else text[span[0]:span[1]].strip()


_UNIT_WORDS = (
    "units?", "square", "sq", "cubic", "cm", "mm", "km", "m", "meters?", "metres?", "inch(?:es)?",
    "in", "feet", "foot", "ft", "yards?", "miles?", "mph", "kg", "g", "grams?", "pounds?", "lbs?",
    "ounces?", "oz", "liters?", "litres?", "ml", "L", "seconds?", "minutes?", "hours?", "days?",
    "weeks?", "months?", "years?", "s", "min", "h", "dollars?", "cents?", "degrees?", "radians?",
    "people", "students?", "points?", "ways?", "times?",
)
_TRAILING_UNITS = re.compile(
    r"(?<=[\d}.])(?:\s+(?:" + "|".join(_UNIT_WORDS) + r")(?:\^\{?\d\}?)?)+\s*$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\left(?![a-z])|\\right(?![a-z])|\\[!,;:> ]|\\displaystyle|~")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°|\\degree")


def _brace_single_arguments(s):
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac{a}2`` -> ``\frac{a}{2}``, ``\sqrt2`` -> ``\sqrt{2}``."""
    s = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\w)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac(\{[^{}]*\})(\w)", r"\\frac\1{\2}", s)
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def normalize(answer):
    """A canonical spelling of ``answer`` (see the module docstring, step 1)."""
    s = answer.strip().strip("$").strip()
    s = _TEXT_WRAPPER.sub(r"\1", s)
    s = _SPACING.sub(" ", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.strip().rstrip(".").strip()
    s = _TRAILING_UNITS.sub("", s)
    s = re.sub(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])|\s+", lambda m: m.group(1) + " " if m.group(1) else "", s)
    s = s.rstrip(".")
    s = s.replace("{,}", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if s.count("=") == 1 and re.match(r"[A-Za-z]=", s):
        s = s[2:]
    return _brace_single_arguments(s)


_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d{1,3})?", re.IGNORECASE)
_FRACTION = re.compile(r"([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}|([-+]?\d+)/([-+]?\d+)")


def as_number(s):
    """The exact value of a normalized plain number, or None if ``s`` is not one."""
    if _DECIMAL.fullmatch(s):
        return Fraction(s)
    m = _FRACTION.fullmatch(s)
    if not m:
        return None
    sign, num, den = (m.group(1), m.group(2), m.group(3)) if m.group(2) else ("", m.group(4), m.group(5))
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return -value if sign == "-" else value


_ENCLOSED = re.compile(r"(\\\{|[(\[])(.*)(\\\}|[)\]])")
_UNORDERED_BRACKETS = {("\\{", "\\}"), ("", "")}  # a set, a bare list


def _split_top_level(s):
    """(opener, items, closer) when ``s`` is a list of two or more comma-separated items, optionally
    enclosed in one pair of brackets (``(1,2)``, ``[0,1)``, ``\\{1,2\\}``); None otherwise."""
    m = _ENCLOSED.fullmatch(s)
    opener, body, closer = m.groups() if m else ("", s, "")
    items, depth, start = [], 0, 0
    for i, c in enumerate(body):
        depth += (c in "([{") - (c in ")]}")
        if depth < 0:
            return None
        if c == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    return (opener, items, closer) if len(items) > 1 else None


def _equal_values(a, b):
    if a == b:
        return True
    x, y = as_number(a), as_number(b)
    if x is not None and y is not None:
        return x == y
    return symbolic.equivalent(a, b)


def _same_items_in_any_order(items_a, items_b):
    """Whether ``items_a`` and ``items_b`` pair up one to one into equal values (see the module docstring)."""
    unused = list(items_b)
    for x in items_a:
        match = next((i for i, y in enumerate(unused) if _equal_values(x, y)), None)
        if match is None:
            return False
        del unused[match]
    return not unused


def _equal_collections(split_a, split_b):
    """Whether two split answers ``(opener, items, closer)`` are equal: ordered or unordered by brackets."""
    (open_a, items_a, close_a), (open_b, items_b, close_b) = split_a, split_b
    unordered_a = (open_a, close_a) in _UNORDERED_BRACKETS
    unordered_b = (open_b, close_b) in _UNORDERED_BRACKETS
    if unordered_a or unordered_b:
        return unordered_a and unordered_b and _same_items_in_any_order(items_a, items_b)
    return (open_a, close_a, len(items_a)) == (open_b, close_b, len(items_b)) and all(
        _equal_values(x, y) for x, y in zip(items_a, items_b))


def equivalent(predicted, truth):
    """Whether the answer ``predicted`` equals ``truth`` (both without ``\\boxed``); None is never equal."""
    if predicted is None or not predicted.strip():
        return False
    a, b = normalize(predicted), normalize(truth)
    if a == b:
        return True
    split_a, split_b = _split_top_level(a), _split_top_level(b)
    if split_a is None or split_b is None:
        return split_a is None and split_b is None and _equal_values(a, b)
    return _equal_collections(split_a, split_b)


def grade(text, truth):
    """(the last boxed answer of ``text`` or None, whether it equals ``truth``)."""
    predicted = last_boxed(text)
    return predicted, equivalent(predicted, truth)
