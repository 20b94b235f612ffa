"""FlexAttention block masks against SDPA's dense masks, on CUDA: the same per-sequence log-probs and
gradients for pair trees and plain packed sequences. FlexAttention has no CPU backward in torch 2.13
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
