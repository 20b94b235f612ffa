"""Completion log-probs from a model's own materialized logits: the independent path the fused head
is checked against (importable from tests: tests/conftest.py puts this folder on ``sys.path``)."""
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


def float64_norms(model):
    """``model`` with every RMSNorm computing in its input dtype. transformers' RMSNorm upcasts to fp32
    and back, which makes a float64 model fp32-precise there: layouts whose attention sums in another
    order then differ at ~1e-7 instead of ~1e-15."""
    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = forward.__get__(module)
    return model
