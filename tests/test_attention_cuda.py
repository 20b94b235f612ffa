"""FlexAttention block masks against SDPA's dense masks, on CUDA: the same per-sequence log-probs and
gradients for pair trees and plain packed sequences, and no recompilation for a new length or a change
of training mode once each grad mode has compiled. FlexAttention has no CPU backward in torch 2.13
(and its CPU forward compiles for over a minute), so this runs only where CUDA is."""
import pytest
import torch

from spot_fast.attention import FLEX_ATTENTION
from spot_fast.batching import collate
from spot_fast.logprob_head import batch_logps, install_logprob_head
from spot_fast.models import BUILTIN_MODEL, load_model

from test_pair_trees import awkward_pairs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention is checked on CUDA only")


def sums_and_gradients(implementation, batch):
    model = install_logprob_head(load_model(BUILTIN_MODEL, attn_implementation=implementation)).cuda()
    logps = batch_logps(model, batch.to("cuda"))
    sums = torch.cat([logps.chosen, logps.rejected])
    (torch.linspace(-1, 2, sums.numel(), device="cuda") * sums).sum().backward()
    return sums.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("share_prefix", [True, False])
def test_flex_attention_matches_sdpa(share_prefix):
    batch = collate(awkward_pairs(), pack=True, pad_id=0, share_prefix=share_prefix)
    sdpa_sums, sdpa_grads = sums_and_gradients("sdpa", batch)
    flex_sums, flex_grads = sums_and_gradients(FLEX_ATTENTION, batch)
    torch.testing.assert_close(flex_sums, sdpa_sums, rtol=1e-4, atol=1e-4)
    for name, grad in sdpa_grads.items():
        torch.testing.assert_close(flex_grads[name], grad, rtol=1e-3, atol=1e-4, msg=name)


def test_flex_attention_does_not_recompile_for_new_lengths_nor_training_mode_flips():
    """Training (with gradients) and scoring (evaluation mode, no gradients) each compile once; then a
    longer batch and flips between them compile nothing (dynamo's count of compiled graphs)."""
    from torch._dynamo.utils import counters

    model = install_logprob_head(load_model(BUILTIN_MODEL, attn_implementation=FLEX_ATTENTION)).cuda()

    def train_then_score(batch):
        model.train()
        batch_logps(model, batch).chosen.sum().backward()
        model.eval()
        with torch.no_grad():
            batch_logps(model, batch)

    shorter, longer = (collate(awkward_pairs() * n, pack=True, pad_id=0, share_prefix=True).to("cuda") for n in (2, 4))
    train_then_score(shorter)  # rows of 2 blocks; a single block would be specialized apart
    compiled = counters["stats"]["unique_graphs"]
    train_then_score(longer)
    train_then_score(shorter)
    assert counters["stats"]["unique_graphs"] == compiled
