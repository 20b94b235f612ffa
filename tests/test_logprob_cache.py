"""The log-prob cache is keyed by the token ids scored (not by a file), and a file that does not
belong to the run (other inputs, another row count, values that do not match their checksum, damaged)
is refused with its name."""
import pytest
import torch

from spot_fast.data import Pair
from spot_fast.logprob_cache import CacheError, LogprobCache, cached, token_digest


def pairs(chosen_tail=9, rejected_tail=4):
    return [Pair([1, 2, 3], [5, 6, chosen_tail], [5, rejected_tail], line=1), Pair([1], [7], [8, 8], line=2)]


def test_the_key_follows_the_token_ids():
    base = token_digest(pairs(), with_rejected=True)
    assert token_digest(pairs(), with_rejected=True) == base
    assert token_digest(pairs(chosen_tail=10), with_rejected=True) != base  # a changed token
    assert token_digest(pairs(rejected_tail=5), with_rejected=True) != base
    assert token_digest(pairs(rejected_tail=5), with_rejected=False) == token_digest(pairs(), with_rejected=False)
    moved = [Pair([1, 2], [3, 5, 6, 9], [5, 4], line=1), pairs()[1]]  # same tokens, another prompt/answer split
    assert token_digest(moved, with_rejected=True) != base


def test_cached_computes_once_then_reuses(tmp_path):
    cache = LogprobCache(tmp_path, "reference", {"tokens": "abc", "model": "m"})
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(3, 2)

    first = cached(cache, 3, compute, "reference")
    again = cached(LogprobCache(tmp_path, "reference", {"tokens": "abc", "model": "m"}), 3, compute, "reference")
    assert len(calls) == 1 and torch.equal(first, again)
    other = LogprobCache(tmp_path, "reference", {"tokens": "abd", "model": "m"})
    assert other.path != cache.path and not other.exists()


def test_a_cache_that_does_not_belong_to_the_run_is_refused(tmp_path):
    cache = LogprobCache(tmp_path, "reference", {"tokens": "abc"})
    cache.save(torch.zeros(3, 2))
    with pytest.raises(CacheError, match=rf"{cache.path}.*holds 3 rows but this run expects 4"):
        cache.load(4)
    imposter = LogprobCache(tmp_path, "reference", {"tokens": "xyz"})
    imposter.path.write_bytes(cache.path.read_bytes())  # right name, other inputs
    with pytest.raises(CacheError, match=rf"{imposter.path} was computed from other inputs"):
        imposter.load(3)
    saved = torch.load(cache.path, weights_only=True)
    saved["logps"][1, 0] = -0.5  # edited, key and checksum kept
    torch.save(saved, cache.path)
    with pytest.raises(CacheError, match=rf"{cache.path}: its values do not match the checksum stored with them"):
        cache.load(3)
    cache.path.write_bytes(cache.path.read_bytes()[:40])  # truncated
    with pytest.raises(CacheError, match=rf"{cache.path} cannot be read .*delete it to recompute"):
        cache.load(3)
