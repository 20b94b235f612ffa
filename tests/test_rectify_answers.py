"""Final-answer extraction and equivalence (spot_fast.sampling.answers, spot_fast.sampling.symbolic), and
the corrected answer taken from an Oracle's reply (spot_fast.rectify.oracle.extract_marked)."""
import threading
import time

import pytest

from spot_fast.rectify.oracle import extract_marked
from spot_fast.sampling.answers import equivalent, grade, last_boxed

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
    (r"\{1, 2, 3\}", r"\{3, 2, 1\}"),
    (r"\{\frac{1}{2}, -1\}", r"\{-1, 0.5\}"),
    ("2, -3", "-3, 2"),
    (r"-3, \sqrt{4}", "2, -3"),
    (r"\{2, -3\}", "-3, 2"),
    (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
    (r"\ln(e^2)", "2"),
    (r"\binom{5}{2}", "10"),
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
    (r"\{1, 2\}", r"\{1, 3\}"),
    (r"\{1, 2\}", r"\{1, 2, 3\}"),
    ("2, 2", "2"),
    ("2, 2, -3", "2, -3, -3"),
    ("2, -3", "(2, -3)"),
    (r"\{1, 2\}", "(1, 2)"),
]


def test_table_is_large_enough():
    assert len(EQUAL) + len(NOT_EQUAL) >= 40


@pytest.mark.parametrize("answer, truth", EQUAL)
def test_equal(answer, truth):
    assert equivalent(answer, truth)
    assert equivalent(truth, answer)


@pytest.mark.parametrize("answer, truth", NOT_EQUAL)
def test_not_equal(answer, truth):
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


def test_a_set_answer_in_another_order_is_graded_right():
    assert grade(r"The primes are $\boxed{\{7, 5, 3, 2\}}$.", r"\{2, 3, 5, 7\}") == (r"\{7, 5, 3, 2\}", True)


def test_symbolic_comparison_works_outside_the_main_thread():
    """math-verify's timeout uses signal.alarm, which raises in any other thread (an Oracle's pool)."""
    results = []
    worker = threading.Thread(target=lambda: results.append(equivalent("(x+1)^2", "x^2+2x+1")))
    worker.start()
    worker.join()
    assert results == [True]


SOLUTION = "We have 2 + 2 = 4.\nSo the answer is $\\boxed{4}$."


@pytest.mark.parametrize("reply", [
    f"<corrected_answer>\n{SOLUTION}\n</corrected_answer>",
    f"Here it is:\n<corrected_answer>\n{SOLUTION}\n</corrected_answer>\n"
    "Note: only the text inside <corrected_answer> counts.",
    "I will reply between <corrected_answer> and </corrected_answer> as asked.\n"
    f"<corrected_answer>\n{SOLUTION}\n</corrected_answer>",
    f"<corrected_answer>\n```\n{SOLUTION}\n```\n</corrected_answer>",
    f"<corrected_answer>\n```latex\n{SOLUTION}\n```\n</corrected_answer>",
    f"<corrected_answer>\n~~~~markdown\n{SOLUTION}\n~~~~\n</corrected_answer>",
], ids=["plain", "marker-mentioned-after", "markers-quoted-before", "fenced", "fenced-with-info",
        "tilde-fenced"])
def test_extract_marked_finds_the_correction(reply):
    assert extract_marked(reply) == SOLUTION


@pytest.mark.parametrize("correction", [
    "Compute:\n```\n2 + 2\n```\nSo $\\boxed{4}$.",
    "```\nx = 2\n```\nand\n```\ny = 2\n```",
    "````\n```\n2 + 2\n```\n$\\boxed{4}$",
], ids=["inner-block", "two-blocks", "unclosed-outer-fence"])
def test_extract_marked_keeps_code_blocks_that_do_not_wrap_everything(correction):
    assert extract_marked(f"<corrected_answer>\n{correction}\n</corrected_answer>") == correction


@pytest.mark.parametrize("reply", [
    "no markers at all",
    "<corrected_answer>\ncut off before the end",
    "</corrected_answer> <corrected_answer> in the wrong order",
])
def test_extract_marked_without_a_complete_block_is_none(reply):
    assert extract_marked(reply) is None
