"""Pair trees (``[prompt | shared | chosen suffix | rejected suffix]``) are exact: per-sequence
log-probs and every parameter gradient equal those of the unshared packed batch and of separate
padded sequences, in float64, on two architectures; the mask never lets one suffix see the other."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spot_fast.attention import dense_mask
from spot_fast.batching import BRANCHES, collate, common_prefix_length, pair_tokens
from spot_fast.data import Pair
from spot_fast.logprob_head import batch_logps, install_logprob_head
from spot_fast.models import BUILTIN_MODEL, load_model
from spot_fast.objective import Objective, micro_batch_loss
from spot_fast.train import micro_batch_weights
from spot_kernels import RewardShift

from hf_logps import float64_norms

VOCAB = 300


def tiny_llama():
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(config)


def tiny_qwen3():
    model = load_model(BUILTIN_MODEL)
    return model


MODELS = {"qwen3": tiny_qwen3, "llama": tiny_llama}


def awkward_pairs():
    """No common prefix, identical answers, the whole shorter answer shared, a fork at the first
    token, long shared parts, odd lengths; ids below VOCAB."""
    g = torch.Generator().manual_seed(11)
    ids = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    common = ids(9)
    return [
        Pair(ids(5), ids(7), ids(4), line=1),                          # nothing shared (first tokens differ below)
        Pair(ids(3), common + [1], common + [1], line=2),              # identical answers
        Pair(ids(6), common[:4], common[:4] + ids(5), line=3),         # chosen is a prefix of rejected
        Pair(ids(2), common + ids(3), common[:6] + ids(8), line=4),    # long shared part
        Pair(ids(7), [5] + ids(4), [6] + ids(6), line=5),              # fork at the first token
        Pair(ids(1), ids(1), ids(2), line=6),                          # one-token prompt and answer
    ]


def model_pair(name):
    """The model as the trainer holds it (fused head), in float64 throughout."""
    return float64_norms(install_logprob_head(MODELS[name]().double(), backend="chunked"))


def sequence_names(num_pairs):
    """What each entry of ``cat([chosen sums, rejected sums])`` is, for failure messages."""
    return [f"{side} sum of pair {i}" for side in ("chosen", "rejected") for i in range(num_pairs)]


def assert_same_sums(sums, expected, context, rtol, atol):
    """Sequence sums equal, a failure naming the sequence (not an index into the concatenation)."""
    for name, got, want in zip(sequence_names(len(sums) // 2), sums, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda report: f"{name} {context}: {report}")


def sums_and_gradients(model, batch, weights):
    """Per-sequence sums and the gradient of ``sum(weights * sums)`` for every parameter."""
    model.zero_grad()
    logps = batch_logps(model, batch)
    sums = torch.cat([logps.chosen, logps.rejected])
    (weights * sums).sum().backward()
    return sums.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", MODELS)
def test_trees_equal_unshared_packed_and_padded_sequences(name):
    pairs = awkward_pairs()
    assert common_prefix_length(pairs[0].chosen_ids, pairs[0].rejected_ids) == 0
    model = model_pair(name)
    weights = torch.linspace(-1.5, 2.0, 2 * len(pairs), dtype=torch.float64)  # a different weight per sequence
    reference_sums, reference_grads = sums_and_gradients(model, collate(pairs, pack=False, pad_id=0), weights)
    for pack in (True, False):
        for share in (True, False):
            batch = collate(pairs, pack=pack, pad_id=0, share_prefix=share)
            assert batch.shares_prefix == share
            sums, grads = sums_and_gradients(model, batch, weights)
            assert_same_sums(sums, reference_sums, f"pack={pack} share={share}", rtol=1e-12, atol=1e-10)
            for n, grad in grads.items():
                torch.testing.assert_close(grad, reference_grads[n], rtol=1e-10, atol=1e-13,
                                           msg=lambda report: f"gradient of {n} pack={pack} share={share}: {report}")


def test_a_tree_forwards_each_shared_token_once():
    pairs = awkward_pairs()
    batch = collate(pairs, pack=True, pad_id=0, share_prefix=True)
    shared = [common_prefix_length(p.chosen_ids, p.rejected_ids) for p in pairs]
    unshared = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert batch.unshared_tokens == unshared
    assert batch.num_tokens == sum(pair_tokens(p, True) for p in pairs) == unshared - sum(len(p.prompt_ids) for p in pairs) - sum(shared)
    assert batch.also_token_index.numel() == sum(shared)  # each shared token scored once, counted twice
    assert batch.num_chosen_tokens == sum(len(p.chosen_ids) for p in pairs)
    assert batch.targets.numel() == sum(len(p.chosen_ids) + len(p.rejected_ids) - s for p, s in zip(pairs, shared))


def test_no_suffix_sees_the_other_suffix_nor_another_pair():
    pairs = awkward_pairs()
    for pack in (True, False):
        batch = collate(pairs, pack=pack, pad_id=0, share_prefix=True)
        mask = dense_mask(batch)[:, 0]
        for row in range(mask.shape[0]):
            doc, branch = batch.doc_ids[row], batch.branch_ids[row]
            q, k = mask[row].nonzero().unbind(1)
            real = doc[q] >= 0
            q, k = q[real], k[real]
            assert (doc[q] == doc[k]).all() and (k <= q).all()
            assert not ((branch[q] == BRANCHES["chosen"]) & (branch[k] == BRANCHES["rejected"])).any()
            assert not ((branch[q] == BRANCHES["rejected"]) & (branch[k] == BRANCHES["chosen"])).any()
            assert not ((branch[q] == BRANCHES["trunk"]) & (branch[k] != BRANCHES["trunk"])).any()


@torch.no_grad()
def test_changing_the_chosen_suffix_leaves_the_rejected_log_probs_unchanged():
    pairs = awkward_pairs()
    model = model_pair("qwen3")
    before = batch_logps(model, collate(pairs, pack=True, pad_id=0, share_prefix=True))
    for p in pairs:
        shared = common_prefix_length(p.chosen_ids, p.rejected_ids)
        if shared < len(p.chosen_ids):  # change a chosen-only token (the first one keeps the fork)
            p.chosen_ids[-1] = (p.chosen_ids[-1] + 1) % VOCAB if shared < len(p.chosen_ids) - 1 else p.chosen_ids[-1]
    after = batch_logps(model, collate(pairs, pack=True, pad_id=0, share_prefix=True))
    for i, (got, expected) in enumerate(zip(after.rejected, before.rejected)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12,
                                   msg=lambda report: f"rejected sum of pair {i} moved with the chosen suffix: {report}")
    assert not torch.allclose(after.chosen, before.chosen)


def test_dpo_gives_shared_tokens_exactly_zero_gradient():
    """The two DPO terms of a shared token cancel exactly: with trees the token is scored once and
    its log-prob gets dL/dlogp = g(chosen) + g(rejected) = 0."""
    pairs = [p for p in awkward_pairs() if common_prefix_length(p.chosen_ids, p.rejected_ids) > 0]
    model = model_pair("qwen3")
    batch = collate(pairs, pack=True, pad_id=0, share_prefix=True)
    captured = {}
    head = model.get_output_embeddings()
    original = head.forward

    def keep_logp(hidden, targets=None, return_stats=False):
        out = original(hidden, targets, return_stats)
        out.logp.retain_grad()
        captured["logp"] = out.logp
        return out
    head.forward = keep_logp
    reference = torch.zeros(len(pairs), 2, dtype=torch.float64)
    loss, _, _ = micro_batch_loss(batch_logps(model, batch), batch, reference, Objective("dpo", 0.5, RewardShift()))
    loss.backward()
    grad = captured["logp"].grad
    assert batch.also_token_index.numel() > 0
    assert torch.equal(grad[batch.also_token_index], torch.zeros_like(grad[batch.also_token_index]))
    own = torch.ones_like(grad, dtype=torch.bool)
    own[batch.also_token_index] = False
    assert (grad[own] != 0).all()


def test_a_step_loss_does_not_depend_on_how_its_pairs_are_grouped():
    """The trainer weights each micro-batch's mean loss by its share of the step's pairs
    (``micro_batch_weights``), so any grouping of the same pairs, groups of unequal size included,
    gives the same loss and gradient as one batch of all of them."""
    pairs = awkward_pairs()
    model = model_pair("llama")
    reference = torch.randn(len(pairs), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 30
    objective = Objective("dpo", 0.5, RewardShift())

    def step(groups):
        model.zero_grad()
        total = 0.0
        for group, weight in zip(groups, micro_batch_weights(groups)):
            batch = collate([pairs[i] for i in group], pack=True, pad_id=0, share_prefix=True)
            loss, _, _ = micro_batch_loss(batch_logps(model, batch), batch, reference[group], objective)
            scaled = loss * weight
            scaled.backward()
            total += float(scaled.detach())
        return total, {n: p.grad.clone() for n, p in model.named_parameters()}

    whole, whole_grads = step([list(range(len(pairs)))])
    for groups in ([[0], [1, 2, 3], [4, 5]], [[0, 1, 2, 3, 4], [5]], [[i] for i in range(len(pairs))]):
        total, grads = step(groups)
        assert total == pytest.approx(whole, rel=1e-12), f"step loss of micro-batches {groups} differs from one batch's"
        for n, grad in grads.items():
            torch.testing.assert_close(grad, whole_grads[n], rtol=1e-10, atol=1e-13,
                                       msg=lambda report: f"gradient of {n}, micro-batches {groups}: {report}")
