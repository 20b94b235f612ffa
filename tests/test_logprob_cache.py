"""The log-prob cache is keyed by the token ids scored (not by a file), the dtype and the kernel
backend, and a file that does not belong to the run (other inputs, another row count, values that do
not match their checksum, damaged) is refused with its name."""
import pytest
import torch

from spot_fast.data import Pair, load_pairs
from spot_fast.logprob_cache import CacheError, LogprobCache, ScoredOnce, cached, token_digest
from spot_fast.logprob_head import LogprobModel, install_logprob_head
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer, model_identity
from spot_fast.scoring import Scorer


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


def test_another_dtype_or_kernel_backend_scores_again_into_a_file_of_its_own(tmp_path):
    """Two ``ScoredOnce`` over the same pairs, model and directory that differ in dtype (fp32, bf16) or
    kernel backend (chunked, eager) each score the pairs and keep their own file; the same settings
    again reuse theirs."""
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    scored_pairs = load_pairs(ASSETS / "pairs.jsonl", tokenizer, 8192)[0][:2]
    scorer = Scorer(2, True, tokenizer.pad_token_id, torch.device("cpu"), share_prefix=True)
    loads = []

    def score_with(dtype, backend):
        def load():
            loads.append((dtype, backend))
            return LogprobModel(install_logprob_head(load_model(BUILTIN_MODEL, dtype=dtype), backend))
        scored = ScoredOnce(scorer, str(tmp_path), dtype, backend)
        return scored.get("reference", "pairs.jsonl", model_identity(BUILTIN_MODEL), scored_pairs, False, load)

    settings = [(torch.float32, "chunked"), (torch.bfloat16, "chunked"), (torch.float32, "eager")]
    values = [score_with(*setting) for setting in settings]
    assert loads == settings, f"scored for {loads}, not for each of {settings}: a cache of another dtype or backend was reused"
    assert len(list(tmp_path.glob("reference-*.pt"))) == len(settings)
    assert not torch.equal(values[0], values[1])  # bf16 scores differ: reusing the fp32 file would be wrong
    torch.testing.assert_close(values[2], values[0], rtol=1e-5, atol=1e-4)  # eager and chunked agree in fp32
    assert torch.equal(score_with(torch.float32, "chunked"), values[0]) and len(loads) == len(settings)  # reused
