"""Final-answer extraction and equivalence (spot_fast.rectify.answers, spot_fast.rectify.symbolic)."""
import time

import pytest

from spot_fast.rectify import symbolic
from spot_fast.rectify.answers import equivalent, grade, last_boxed

EQUAL = [
    ("7", "7"),
    ("0.5", r"\frac12"),
    (r"\dfrac{1}{2}", "0.5"),
    (r"\tfrac{3}{4}", "0.75"),
    (r"\frac{2}{4}", r"\frac{1}{2}"),
    ("1,000", "1000"),
    ("1{,}000", "1000"),
    (r"1\,000", "1000"),
    (r"5\text{ cm}", "5"),
    ("12 dollars", "12"),
    (r"\$12", "12"),
    (r"90^\circ", "90"),
    (r"90^{\circ}", "90"),
    (r"50\%", "50"),
    ("5.", "5"),
    ("  5 ", "5"),
    ("$5$", "5"),
    ("x = 3", "3"),
    (r"\left(1, \frac{1}{2}\right)", "(1, 0.5)"),
    (r"\sqrt{8}", r"2\sqrt{2}"),
    (r"2\sqrt2", r"2\sqrt{2}"),
    ("(x+1)^2", "x^2+2x+1"),
    (r"2\pi r", r"2 r \pi"),
    (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}"),
    ("-0.25", r"-\frac{1}{4}"),
    (r"\frac{-1}{4}", "-0.25"),
    ("1e3", "1000"),
    ("3/4", "0.75"),
    (r"\text{(B)}", "(B)"),
    ("[0, 1)", "[0,1)"),
    (r"\{1, 2\}", r"\{1,2\}"),
    (r"\sqrt[3]{8}", "2"),
    (r"\frac{\pi}{2}", r"\pi/2"),
    ("10 square units", "10"),
    (r"2^{10}", "1024"),
    (r"\sin x", r"\sin(x)"),
    (r"2 \cdot 3", "6"),
]
NOT_EQUAL = [
    ("7", "6"),
    ("0.33", r"\frac13"),
    ("-5", "5"),
    (r"\frac{1}{2}", "2"),
    ("2x", "2"),
    ("[0,1)", "(0,1]"),
    ("(1,2)", "(2,1)"),
    ("(1,2)", "(1,2,3)"),
    ("1,2", "12"),
    (r"\sqrt{2}", "1.414"),
    ("x+1", "x-1"),
    ("x^2", "2x"),
    ("5 cm", "6"),
    (r"\infty", "1000"),
    (r"10^{10^{10}}", "1"),
    ("", "5"),
    (None, "5"),
]


@pytest.fixture(params=["sympy", "math_verify"])
def backend(request, monkeypatch):
    """Run with the sympy fallback always, and with math-verify where it is installed."""
    if request.param == "sympy":
        monkeypatch.setattr(symbolic, "math_verify", None)
    elif symbolic.math_verify is None:
        pytest.skip("math-verify is not installed")
    return request.param


def test_table_is_large_enough():
    assert len(EQUAL) + len(NOT_EQUAL) >= 40


@pytest.mark.parametrize("answer, truth", EQUAL)
def test_equal(backend, answer, truth):
    assert equivalent(answer, truth)
    assert equivalent(truth, answer)


@pytest.mark.parametrize("answer, truth", NOT_EQUAL)
def test_not_equal(backend, answer, truth):
    start = time.perf_counter()
    assert not equivalent(answer, truth)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("text, boxed", [
    (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"first \boxed{1}, then \boxed{2}", "2"),
    (r"$\boxed{a^{b^{c}}}$", "a^{b^{c}}"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed{ 12 }", "12"),
    (r"\fbox{7}", "7"),
    (r"The answer is $\boxed 5$.", "5"),
    (r"\boxed{3} and then \boxed{4", None),
    (r"\boxedx", None),
    ("no box at all: 42", None),
])
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


def test_grade():
    assert grade(r"so $x = \boxed{\dfrac{1}{2}}$.", "0.5") == (r"\dfrac{1}{2}", True)
    assert grade(r"\boxed{3}", "4") == ("3", False)
    assert grade("no answer", "4") == (None, False)


@pytest.mark.parametrize("text", [
    "__import__('os').system('echo unsafe')",
    "().__class__.__bases__",
    "x.__class__",
    "lambda: 1",
    r"\frac{1}",
])
def test_translation_refuses_everything_outside_the_subset(text):
    assert symbolic.to_sympy(text) is None


def test_translation_makes_implicit_operations_explicit():
    x, r = symbolic.to_sympy("x"), symbolic.to_sympy("r")
    assert symbolic.to_sympy(r"2\pi r") == 2 * symbolic.sympy.pi * r
    assert symbolic.to_sympy(r"\frac{1}{2}x^2") == x ** 2 / 2
    assert symbolic.to_sympy("0.5") == symbolic.sympy.Rational(1, 2)
