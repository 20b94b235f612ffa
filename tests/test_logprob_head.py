"""The training model keeps working as a language model: with the fused head installed,
``model(input_ids).logits`` and ``generate`` give what the original model gives."""
import torch

from spot_fast.logprob_head import LogprobHead, install_logprob_head
from spot_fast.models import BUILTIN_MODEL, load_model


def test_logits_and_generation_are_unchanged():
    plain = load_model(BUILTIN_MODEL)
    model = install_logprob_head(load_model(BUILTIN_MODEL))
    assert isinstance(model.get_output_embeddings(), LogprobHead)
    ids = torch.randint(0, plain.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=0, atol=0)
    expected = plain.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), expected)
    assert expected.shape == (2, 14)
