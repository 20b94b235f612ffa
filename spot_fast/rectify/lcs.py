"""Exact longest common subsequence of token-id sequences, the change ratio, and token diffs.

SPoT keeps a pair only if the Oracle's edit is small:

    R(y-, y+) = 1 - |LCS(y-, y+)| / |y+|        (over token ids; R = 1 when y+ is empty)

R = 0 means y+ is a subsequence of y- (pure deletions); R = 1 means nothing of y- survives.

The LCS comes from rapidfuzz's ``LCSseq``, which computes it exactly with the bit-parallel algorithm
(Hyyrö 2004): one pass over one sequence with word-sized bit vectors over the other, O(n * m / 64)
word operations, so two 8k-token answers take milliseconds. Unlike difflib's ``SequenceMatcher``
(a heuristic that skips "junk" and popular elements), it is the true maximum; the tests hold it to
the O(n * m) dynamic program. Its ``opcodes`` are an alignment of the same (maximal) length, which
``diff_spans`` uses to show what an edit changed.
"""
try:
    from rapidfuzz.distance import LCSseq
except ImportError as e:  # pragma: no cover - rapidfuzz is a declared dependency of rectification
    raise ImportError("rectification needs rapidfuzz: pip install 'spot-fast[rectify]'") from e


def lcs_length(a, b):
    """Length of the longest common subsequence of the sequences ``a`` and ``b`` (exact)."""
    return LCSseq.similarity(a, b)


def change_ratio(rejected, chosen):
    """``1 - |LCS(rejected, chosen)| / |chosen|``; 1.0 when ``chosen`` is empty."""
    if not chosen:
        return 1.0
    return 1.0 - lcs_length(rejected, chosen) / len(chosen)


def diff_spans(a, b):
    """Alignment of ``a`` into ``b`` as ``(tag, a_start, a_end, b_start, b_end)`` tuples.

    ``tag`` is ``equal``, ``delete``, ``insert`` or ``replace``; the spans cover both sequences in
    order, and the ``equal`` spans total ``lcs_length(a, b)`` tokens.
    """
    return [tuple(op) for op in LCSseq.opcodes(a, b)]
