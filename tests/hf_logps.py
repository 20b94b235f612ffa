"""Completion log-probs from a model's own materialized logits: the independent path the fused head
is checked against (importable from tests: pytest puts this folder on ``sys.path``)."""
import torch


@torch.no_grad()
def hf_token_logps(model, prompt, completion):
    """float64 [len(completion)] log-probs of each completion token given everything before it."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0].double().log_softmax(-1)
    positions = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
    return logits[positions, ids[0, positions + 1]]


def perturbed(model, scale=0.02, seed=0):
    """``model`` with every parameter moved by Gaussian noise (so it differs from its starting point)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)
    return model
