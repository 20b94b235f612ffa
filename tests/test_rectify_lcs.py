"""Exact LCS, change ratio and token diffs (spot_fast.rectify.lcs)."""
import random
import time

import pytest

from spot_fast.rectify.lcs import change_ratio, diff_spans, lcs_length


def lcs_dp(a, b):
    """The textbook O(n * m) dynamic program: the specification."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def random_pairs(count, seed=0):
    """Random sequences over small alphabets (many ties, where heuristics go wrong), of lengths that
    cross the 64-bit word boundary, plus edited copies (the shape of real corrections)."""
    rng = random.Random(seed)
    for _ in range(count):
        alphabet = rng.choice([2, 3, 5, 40, 151_936])
        a = [rng.randrange(alphabet) for _ in range(rng.randint(0, 200))]
        if rng.random() < 0.5:
            b = [rng.randrange(alphabet) for _ in range(rng.randint(0, 200))]
        else:
            b = [t if rng.random() < 0.8 else rng.randrange(alphabet) for t in a]
            b.insert(rng.randint(0, len(b)), rng.randrange(alphabet))
        yield a, b


def test_lcs_equals_the_dynamic_program():
    for a, b in random_pairs(200):
        assert lcs_length(a, b) == lcs_dp(a, b)


def test_difflib_is_not_exact_but_we_are():
    """The case the spec warns about: difflib's matcher is a heuristic and undercounts here."""
    import difflib

    a, b = [1, 2, 3, 4, 1, 2, 3, 4] * 30, [4, 3, 2, 1] * 60
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    heuristic = sum(block.size for block in matcher.get_matching_blocks())
    assert heuristic < lcs_dp(a, b) == lcs_length(a, b)


def test_diff_spans_align_with_a_longest_common_subsequence():
    for a, b in random_pairs(100, seed=1):
        spans = diff_spans(a, b)
        assert [i for _, a0, a1, _, _ in spans for i in range(a0, a1)] == list(range(len(a)))
        assert [j for _, _, _, b0, b1 in spans for j in range(b0, b1)] == list(range(len(b)))
        equal = [s for s in spans if s[0] == "equal"]
        assert all(a[a0:a1] == b[b0:b1] for _, a0, a1, b0, b1 in equal)
        assert sum(a1 - a0 for _, a0, a1, _, _ in equal) == lcs_dp(a, b)


def test_change_ratio():
    assert change_ratio([1, 2, 3], [1, 2, 3]) == 0.0
    assert change_ratio([1, 2, 3, 4], [1, 3]) == 0.0  # deletions only
    assert change_ratio([1, 2, 3], [4, 5]) == 1.0
    assert change_ratio([1, 2, 3, 4], [1, 2, 9, 9]) == pytest.approx(0.5)
    assert change_ratio([1, 2], []) == 1.0


def test_8k_token_pairs_take_under_a_second():
    rng = random.Random(2)
    a = [rng.randrange(151_936) for _ in range(8192)]
    b = [t if rng.random() < 0.7 else rng.randrange(151_936) for t in a]
    unrelated = [rng.randrange(600) for _ in range(8192)], [rng.randrange(600) for _ in range(8192)]
    start = time.perf_counter()
    ratio = change_ratio(a, b)
    lcs_length(*unrelated)
    diff_spans(a, b)
    assert time.perf_counter() - start < 1.0
    assert 0.2 < ratio < 0.4
