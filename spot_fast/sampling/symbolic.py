r"""Symbolic equivalence of two final answers written in LaTeX, decided by math-verify.

``equivalent(answer, truth)`` is ``verify(parse(truth), parse(answer))`` from math-verify (LaTeX ->
sympy through its ANTLR grammar, then numeric and symbolic comparison). Two guards come first:

- ``huge_power``: a nested power (``10^{10^{10}}``) or integer exponents whose product exceeds
  ``MAX_EXPONENT`` is "not shown equivalent" without asking, since sympy would set out to compute it.
- math-verify bounds each parse and comparison with ``signal.alarm``, which works only in the main
  thread; in any other thread (an Oracle run from a thread pool) it is called without that timeout.

Any failure inside math-verify is "not shown equivalent": the comparison errs towards "not equal".
"""
import re
import threading
from math import prod

import math_verify

MAX_EXPONENT = 10_000
TIMEOUT_SECONDS = 5


def brace_group(text, start):
    r"""(content, end) of the brace group opening at ``text[start] == "{"``; None if never closed.

    Depth counting; an escaped character (``\{``, ``\}``, ``\\``) is content, not structure.
    """
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
        i += 1
    return None


def huge_power(latex):
    """Whether ``latex`` has a nested power (``10^{10^{10}}``) or integer exponents whose product
    exceeds ``MAX_EXPONENT``: values that sympy (and math-verify) would set out to compute."""
    exponents = []
    for caret in re.finditer(r"\^", latex):
        start = caret.end()
        group = brace_group(latex, start) if latex.startswith("{", start) else (latex[start:start + 1], None)
        if group is None:
            continue
        if "^" in group[0]:
            return True
        exponents += [max(1, int(n)) for n in re.findall(r"\d+", group[0])]
    return prod(exponents) > MAX_EXPONENT


def equivalent(answer, truth):
    """Whether the LaTeX expressions ``answer`` and ``truth`` are shown to have the same value."""
    if huge_power(answer) or huge_power(truth):
        return False
    timeout = TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    gold = math_verify.parse(f"${truth}$", parsing_timeout=timeout)
    predicted = math_verify.parse(f"${answer}$", parsing_timeout=timeout)
    return bool(math_verify.verify(gold, predicted, timeout_seconds=timeout))
