r"""Symbolic equivalence of two final answers written in LaTeX.

With ``math-verify`` installed, it decides: ``verify(parse(truth), parse(answer))``. Without it, sympy
decides on a translation of the LaTeX subset that final answers use:

    numbers, single-letter variables, + - * / ^, parentheses and braces, \frac, \sqrt (with an index),
    \cdot \times \div, \pi \infty e, \ln \log \exp \sin \cos \tan

Two answers are equivalent when ``simplify(a - b) == 0``. ``to_sympy`` reads the LaTeX left to right
into Python source made only of what it emits itself (``Rational(2,1)``, ``_x`` for the variable x,
names from a fixed table, operators, parentheses), with implicit multiplication made explicit
(``2\pi r`` -> ``Rational(2,1)*pi*_r``), and evaluates that source with no builtins and only sympy
names in scope: nothing from the answer reaches ``eval`` except digits and single letters. Anything
outside the subset, or longer than ``MAX_LENGTH``, is "not shown equivalent"; so is, with either
backend, a power too large to compute (``huge_power``).
"""
import re
from fractions import Fraction
from math import prod

import sympy

MAX_LENGTH = 300
MAX_EXPONENT = 10_000

try:
    import math_verify
except ImportError:
    math_verify = None


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


_CONSTANTS = {"\\pi": "pi", "\\infty": "oo"}
_OPERATORS = {"\\cdot": "*", "\\times": "*", "\\div": "/"}
_FUNCTIONS = {"\\ln": "log", "\\log": "log", "\\exp": "exp", "\\sin": "sin", "\\cos": "cos", "\\tan": "tan"}
_NAMESPACE = {
    "__builtins__": {}, "Rational": sympy.Rational, "sqrt": sympy.sqrt,
    "root": sympy.root, "pi": sympy.pi, "oo": sympy.oo, "E": sympy.E, "log": sympy.log,
    "exp": sympy.exp, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan,
}
_NUMBER = re.compile(r"\d+(\.\d+)?|\.\d+")


class _Unsupported(ValueError):
    pass


class _Translator:
    """LaTeX subset -> Python source over ``_NAMESPACE`` (see the module docstring)."""

    def argument(self, s, i):
        """(text, end) of a macro argument at ``s[i]``: a brace group or a single character."""
        if i >= len(s):
            raise _Unsupported("missing argument")
        if s[i] == "{":
            group = brace_group(s, i)
            if group is None:
                raise _Unsupported("unclosed brace")
            return group
        return s[i], i + 1

    def translate(self, s):
        tokens, i = [], 0
        while i < len(s):
            c = s[i]
            if c.isspace():
                i += 1
                continue
            number = _NUMBER.match(s, i)
            command = re.match(r"\\[A-Za-z]+", s[i:])
            if number:
                value = Fraction(number.group(0))
                tokens.append(("operand", f"Rational({value.numerator},{value.denominator})"))
                i = number.end()
            elif c.isalpha() and c.isascii():
                tokens.append(("operand", "E" if c == "e" else f"_{c}"))
                i += 1
            elif command and command.group(0) == "\\frac":
                num, i = self.argument(s, i + 5)
                den, i = self.argument(s, i)
                tokens.append(("operand", f"(({self.translate(num)})/({self.translate(den)}))"))
            elif command and command.group(0) == "\\sqrt":
                i += 5
                index = None
                if s.startswith("[", i):
                    end = s.find("]", i)
                    if end < 0:
                        raise _Unsupported("unclosed root index")
                    index, i = s[i + 1:end], end + 1
                radicand, i = self.argument(s, i)
                source = f"sqrt({self.translate(radicand)})" if index is None else \
                    f"root({self.translate(radicand)},{self.translate(index)})"
                tokens.append(("operand", source))
            elif command and command.group(0) in _CONSTANTS:
                tokens.append(("operand", _CONSTANTS[command.group(0)]))
                i += len(command.group(0))
            elif command and command.group(0) in _FUNCTIONS:
                tokens.append(("function", _FUNCTIONS[command.group(0)]))
                i += len(command.group(0))
            elif command and command.group(0) in _OPERATORS:
                tokens.append(("operator", _OPERATORS[command.group(0)]))
                i += len(command.group(0))
            elif c == "^":
                exponent, i = self.argument(s, i + 1)
                tokens.append(("power", f"**({self.translate(exponent)})"))
            elif c in "+-*/":
                tokens.append(("operator", c))
                i += 1
            elif c in "({":
                tokens.append(("open", "("))
                i += 1
            elif c in ")}":
                tokens.append(("close", ")"))
                i += 1
            else:
                raise _Unsupported(f"unsupported text at {s[i:i + 10]!r}")
        return self.join(tokens)

    @staticmethod
    def join(tokens):
        """Concatenate tokens, writing what LaTeX leaves implicit: multiplication (``2x``) and the
        parentheses of a function applied to one operand (``\\sin x``)."""
        out, previous = [], None
        for kind, text in tokens:
            if previous == "function" and kind == "operand":
                text = f"({text})"
            elif previous in ("operand", "close", "power") and kind in ("operand", "function", "open"):
                out.append("*")
            out.append(text)
            previous = kind
        return "".join(out)


def to_sympy(latex):
    """The sympy expression for ``latex`` (the subset above), or None when outside it."""
    if len(latex) > MAX_LENGTH or huge_power(latex):
        return None
    try:
        source = _Translator().translate(latex)
        names = {n: sympy.Symbol(n[1:]) for n in re.findall(r"_[A-Za-z]", source)}
        expr = eval(source, dict(_NAMESPACE), names)  # noqa: S307 - source is built from our own tokens
    except Exception:  # noqa: BLE001 - unsupported or ill-formed input is "not shown equivalent"
        return None
    return expr if isinstance(expr, sympy.Basic) else None


def _sympy_equivalent(a, b):
    x, y = to_sympy(a), to_sympy(b)
    if x is None or y is None:
        return False
    try:
        return sympy.simplify(x - y) == 0
    except Exception:  # noqa: BLE001 - sympy raises many types on odd input; a failure proves nothing
        return False


def _math_verify_equivalent(answer, truth):
    return bool(math_verify.verify(math_verify.parse(f"${truth}$"), math_verify.parse(f"${answer}$")))


def equivalent(answer, truth):
    """Whether the LaTeX expressions ``answer`` and ``truth`` are shown to have the same value."""
    if huge_power(answer) or huge_power(truth):
        return False
    if math_verify is not None:
        return _math_verify_equivalent(answer, truth)
    return _sympy_equivalent(answer, truth)
