"""Attention masks, on the CPU. The block lists (full, partial, skipped) of every block size equal
those of the dense rule on awkward batches, and so does the FlexAttention ``BlockMask`` entry by
entry; building the block mask of an L=13k batch allocates no tensor larger than a few L; the SDPA
mask is the only [L, L] tensor its build allocates. FlexAttention run eagerly (its math path) gives
SDPA's log-probs, and its compiled function is traced once across training-mode flips and lengths."""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from spot_fast import attention
from spot_fast.attention import FLEX_ATTENTION, FLEX_BLOCK_SIZE, attended_block_pairs, attended_blocks, dense_mask, model_inputs
from spot_fast.batching import TRUNK, collate
from spot_fast.data import Pair
from spot_fast.logprob_head import batch_logps, install_logprob_head
from spot_fast.models import BUILTIN_MODEL, load_model

from test_pair_trees import VOCAB, awkward_pairs


def long_pairs():
    """Pairs of a few blocks of 128 tokens each, sharing prefixes of awkward lengths."""
    g = torch.Generator().manual_seed(5)
    ids = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    common = ids(300)
    return [Pair(ids(90), common[:200] + [1] + ids(60), common[:200] + [2] + ids(150), line=1),
            Pair(ids(128), common[:127] + [1], common[:127] + [2] + ids(128), line=2),
            Pair(ids(1), common + [1], common + [1], line=3)]


def one_answer(pairs):
    return [Pair(p.prompt_ids, p.chosen_ids, None, line=p.line) for p in pairs]


def layouts(pairs):
    """Trees, sequences and one-answer sequences, each packed and padded."""
    for examples in (pairs, one_answer(pairs)):
        for pack in (True, False):
            for share in (True, False):
                batch = collate(examples, pack=pack, pad_id=0, share_prefix=share)
                if batch.shares_prefix == share:  # one-answer examples are never trees
                    yield batch


def blocks_of_dense(mask, block_size):
    """(partial, full) block lists of a dense [rows, 1, L, L] mask: full where every existing (query,
    key) pair of the two blocks is visible, partial where some but not all are."""
    rows, length = mask.shape[0], mask.shape[-1]
    n = -(-length // block_size)
    beyond = n * block_size - length
    visible = F.pad(mask[:, 0].int(), (0, beyond, 0, beyond)).view(rows, n, block_size, n, block_size).sum((2, 4))
    tokens = F.pad(torch.ones(length, dtype=torch.int), (0, beyond)).view(n, block_size).sum(1)
    full = visible == tokens[:, None] * tokens[None, :]
    return (visible > 0) & ~full, full


@pytest.mark.parametrize("pairs, block_size", [(awkward_pairs, 1), (awkward_pairs, 2), (awkward_pairs, 3), (awkward_pairs, 8),
                                               (long_pairs, 50), (long_pairs, 128)])
def test_block_lists_equal_those_of_the_dense_rule(pairs, block_size):
    for batch in layouts(pairs()):
        partial, full = attended_blocks(batch.doc_ids, batch.branch_ids, block_size)
        dense_partial, dense_full = blocks_of_dense(dense_mask(batch), block_size)
        where = f"pack={batch.packed} trees={batch.shares_prefix} length={batch.input_ids.shape[1]}"
        assert torch.equal(partial, dense_partial), where
        assert torch.equal(full, dense_full), where
        assert attended_block_pairs(batch, block_size) == (int(dense_partial.sum()), int(dense_full.sum()))


def test_flex_block_mask_equals_the_dense_rule_entry_by_entry():
    from torch.nn.attention.flex_attention import create_mask

    seen_full = seen_partial = 0
    for batch in layouts(long_pairs()):
        inputs = model_inputs(batch, FLEX_ATTENTION)
        block_mask, rows, length = inputs["attention_mask"], *inputs["input_ids"].shape
        assert length % FLEX_BLOCK_SIZE == 0 and length - batch.input_ids.shape[1] < FLEX_BLOCK_SIZE
        beyond = length - batch.input_ids.shape[1]
        padded = type(batch)(**batch.__dict__ | {  # padding tokens (document -1) end each row
            "doc_ids": F.pad(batch.doc_ids, (0, beyond), value=-1),
                                                  "branch_ids": F.pad(batch.branch_ids, (0, beyond), value=TRUNK)})
        expected = dense_mask(padded)
        n = length // FLEX_BLOCK_SIZE

        def listed(counts, indices):
            blocks = torch.zeros(rows, n, n, dtype=torch.bool)
            for row in range(rows):
                for query_block in range(n):
                    blocks[row, query_block, indices[row, 0, query_block, :counts[row, 0, query_block]].long()] = True
            return blocks

        partial = listed(block_mask.kv_num_blocks, block_mask.kv_indices)
        full = listed(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
        dense_partial, dense_full = blocks_of_dense(expected, FLEX_BLOCK_SIZE)
        assert torch.equal(partial, dense_partial) and torch.equal(full, dense_full)
        expand = lambda blocks: blocks.repeat_interleave(FLEX_BLOCK_SIZE, 1).repeat_interleave(FLEX_BLOCK_SIZE, 2)  # noqa: E731
        rule = create_mask(block_mask.mask_mod, rows, 1, length, length)[:, 0]  # the mask_mod as torch evaluates it
        assert torch.equal(expand(full) | (expand(partial) & rule), expected[:, 0])
        seen_full, seen_partial = seen_full + int(full.sum()), seen_partial + int(partial.sum())
    assert seen_full > 0 and seen_partial > 0


class Allocations(TorchDispatchMode):
    """Records the memory (storage, bytes) of every tensor an operation returns; views share their base's."""

    def __init__(self):
        super().__init__()
        self.storages = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return out


def spot_like_pairs(count, prompt, answer, shared):
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    pairs = []
    for line in range(count):
        common = ids(shared)
        pairs.append(Pair(ids(prompt), common + [1] + ids(answer - shared - 1), common + [2] + ids(answer - shared - 1), line))
    return pairs


def test_the_flex_block_mask_of_a_13k_batch_allocates_no_length_squared_tensor():
    batch = collate(spot_like_pairs(4, 256, 2048, 1024), pack=True, pad_id=0, share_prefix=True)
    length = batch.input_ids.shape[1]
    assert length > 13000
    with Allocations() as record:
        model_inputs(batch, FLEX_ATTENTION)
    assert max(record.storages.values()) <= 4 * length * 8  # int64 ids: a few of them per token


def test_the_dense_mask_is_the_rule_and_the_only_length_squared_tensor_its_build_allocates(monkeypatch):
    batch = collate(long_pairs(), pack=True, pad_id=0, share_prefix=True)
    length = batch.input_ids.shape[1]
    monkeypatch.setattr(attention, "DENSE_MASK_CHUNK_ELEMENTS", length * length // 16)  # 16 chunks
    with Allocations() as record:
        mask = dense_mask(batch)
    assert [size for size in record.storages.values() if size > length * length // 8] == [mask.numel()]  # bool: 1 byte
    index = torch.arange(length)
    assert torch.equal(mask[0, 0], attention.visible(batch.doc_ids[0], batch.branch_ids[0], index[:, None], index[None, :]))


@torch.no_grad()
def test_eager_flex_attention_gives_sdpa_log_probs_and_compiles_once(monkeypatch):
    """FlexAttention's eager (math) path on the CPU applies the mask rule through the block mask's
    ``mask_mod``; the frame is compiled once for padded lengths 256 and 384 and both training modes
    (a length of one block, 128, would be specialized: dynamic shapes treat a dimension of size 1 apart)."""
    counter = CompileCounter()
    monkeypatch.setattr(attention, "FLEX_COMPILE_BACKEND", counter)
    sdpa = install_logprob_head(load_model(BUILTIN_MODEL, dtype=torch.float64), backend="chunked")
    flex = install_logprob_head(load_model(BUILTIN_MODEL, dtype=torch.float64, attn_implementation=FLEX_ATTENTION),
                                backend="chunked")
    lengths = set()
    for share_prefix, training in ((True, True), (False, False), (True, False)):
        batch = collate(awkward_pairs() + awkward_pairs(), pack=True, pad_id=0, share_prefix=share_prefix)
        lengths.add(model_inputs(batch, FLEX_ATTENTION)["input_ids"].shape[1])
        flex.train(training)
        expected, got = batch_logps(sdpa, batch), batch_logps(flex, batch)
        torch.testing.assert_close(got.chosen, expected.chosen, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(got.rejected, expected.rejected, rtol=1e-12, atol=1e-10)
    assert len(lengths) == 2
    assert counter.frame_count == 1


def test_transformers_own_flex_attention_is_refused():
    batch = collate(awkward_pairs(), pack=True, pad_id=0, share_prefix=True)
    with pytest.raises(ValueError, match=FLEX_ATTENTION):
        attention.attention_mask(batch, "flex_attention")
