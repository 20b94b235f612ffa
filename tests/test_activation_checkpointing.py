"""Activation checkpointing modes (``spot_fast/activation_checkpointing.py``): every mode gives the
sequence sums and gradients of no recompute in float64, and each recomputes what it says, counted op
by op in the backward: ``on`` the layer's matmuls (all but its last: the recompute stops once the
saved tensors are back) and its attention, ``selective`` no matmul and no attention,
``selective-half`` the layer's second, fourth and sixth matmul (k, o and up projections). The built-in
Qwen3 on pair trees, under SDPA's dense mask and under varlen's segments (the CPU reference, per-segment
SDPA), with and without LoRA adapters; and torch's varlen attention op, which runs on a GPU, on the
meta device."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spot_fast import activation_checkpointing
from spot_fast.attention import varlen_model_inputs
from spot_fast.batching import collate
from spot_fast.config import parse_config
from spot_fast.logprob_head import batch_logps, install_logprob_head
from spot_fast.lora import add_lora
from spot_fast.models import BUILTIN_MODEL, load_model
from spot_fast.varlen_attention import VARLEN_ATTENTION, causal_varlen_attention, torch_varlen_attn

from hf_logps import float64_norms
from test_pair_trees import awkward_pairs

MODES = ("off", "on", "selective", "selective-half")
LINEAR = ("aten.mm.default", "aten.addmm.default")
LAYERS = 2  # the built-in model's decoder layers


class OpCounts(TorchDispatchMode):
    """Counts of every op dispatched inside the mode, by name."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] = self.counts.get(str(func), 0) + 1
        return func(*args, **(kwargs or {}))

    def matmuls(self):
        """The linear layers' matmuls."""
        return sum(self.counts.get(name, 0) for name in LINEAR)

    def attention(self):
        """Attention's ops: SDPA's fused kernels (a forward; their backward is another op), its math
        path's batched matmuls (forward and backward; the varlen reference's masked SDPA on the CPU)."""
        names = {str(op) for op in activation_checkpointing.saved_ops()} - set(LINEAR)
        return sum(n for name, n in self.counts.items() if name in names)


def float64_model(attention, lora):
    model = load_model(BUILTIN_MODEL, attn_implementation=attention).double()
    model = float64_norms(install_logprob_head(model, backend="chunked"))
    if lora:
        add_lora(model, 4, 8, "q_proj,v_proj,down_proj", seed=0)
        with torch.no_grad():  # B starts at zero, which would leave A without a gradient
            generator = torch.Generator().manual_seed(5)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.1)
        # transformers makes the embeddings' output require a gradient when it checkpoints a model with
        # adapters (then the first layer's backward also computes its input's gradient); here it always
        # does, so that no recompute is the same backward
        model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))
    return model.train()


def backward_of(model, mode, batch):
    """Sequence sums, the gradient of a weighted sum of them for every trainable parameter, and the ops
    the backward dispatched, with ``mode`` applied to ``model``."""
    activation_checkpointing.enable(model, mode)
    model.zero_grad()
    logps = batch_logps(model, batch)
    sums = torch.cat([logps.chosen, logps.rejected])
    weights = torch.linspace(-1.5, 2.0, sums.numel(), dtype=torch.float64)
    with OpCounts() as ops:
        (weights * sums).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return sums.detach(), grads, ops


@pytest.fixture(scope="module", params=["sdpa", VARLEN_ATTENTION])
def attention(request):
    return request.param


@pytest.mark.parametrize("lora", [False, True], ids=["full-model", "lora"])
def test_every_mode_gives_the_gradients_of_no_recompute_and_recomputes_what_it_says(attention, lora):
    batch = collate(awkward_pairs(), pack=True, pad_id=0, share_prefix=True)
    model = float64_model(attention, lora)
    results = {mode: backward_of(model, mode, batch) for mode in MODES}
    sums, grads, off = results["off"]
    assert all(g.abs().max() > 0 for g in grads.values())  # every compared gradient is there to compare
    if lora:
        assert grads and all("lora_" in name for name in grads)
    for mode in MODES[1:]:
        got_sums, got_grads, _ = results[mode]
        torch.testing.assert_close(got_sums, sums, rtol=1e-13, atol=1e-13, msg=lambda m: f"{mode}: {m}")
        assert got_grads.keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-12, atol=1e-13,
                                       msg=lambda m: f"{mode}, gradient of {name}: {m}")

    recomputed = {mode: results[mode][2].matmuls() - off.matmuls() for mode in MODES}
    attention_recomputed = {mode: results[mode][2].attention() - off.attention() for mode in MODES}
    assert attention_recomputed == {"off": 0, "on": attention_recomputed["on"], "selective": 0, "selective-half": 0}
    assert attention_recomputed["on"] >= LAYERS  # per layer (varlen: per segment, 2 batched matmuls each)
    # Per layer, on: every matmul but the last (q, k, v, o, gate, up; with LoRA on q, v and down also their
    # A and B, and down's base and A: 12); selective-half: the 2nd, 4th, ... (k, o, up; with LoRA q's A, k,
    # v's A, o, up, down's A)
    per_layer = {"off": 0, "on": 12 if lora else 6, "selective": 0, "selective-half": 6 if lora else 3}
    assert recomputed == {mode: n * LAYERS for mode, n in per_layer.items()}


def test_modes_resolve_and_parse():
    """``auto`` is ``on`` with CUDA and ``off`` on the CPU; every mode is an option value, the values of
    configurations written before ``selective`` (``on``, ``off``, ``auto``) included."""
    assert [activation_checkpointing.resolve("auto", cuda) for cuda in (True, False)] == ["on", "off"]
    for mode in MODES + ("auto",):
        config = parse_config(["--gradient-checkpointing", mode, "--output-dir", "unused"])
        assert config.gradient_checkpointing == mode
        assert activation_checkpointing.resolve(mode, False) == (mode if mode != "auto" else "off")
    with pytest.raises(SystemExit):
        parse_config(["--gradient-checkpointing", "full", "--output-dir", "unused"])


def kernel_varlen_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, varlen_segments=None,
                          **kwargs):
    """The varlen attention function with torch's ``varlen_attn`` as its kernel on any device (the
    trainer uses it on CUDA only): on the meta device its meta kernel runs."""
    rows, heads, length, head_dim = query.shape
    flat = lambda t: t.transpose(1, 2).reshape(rows * length, t.shape[1], head_dim)  # noqa: E731
    out = causal_varlen_attention(flat(query), flat(key), flat(value), varlen_segments, scale=scaling,
                                  kernel=torch_varlen_attn())
    return out.view(rows, length, heads, head_dim), None


@pytest.mark.skipif(torch_varlen_attn() is None, reason="this torch has no torch.nn.attention.varlen")
def test_selective_keeps_torchs_varlen_attention_op():
    """What --attention varlen runs on a GPU, torch's ``torch_attn::_varlen_attn`` custom op, is kept by
    the selective modes and run again by ``on``: the built-in model's shapes on the meta device (the
    op's meta kernel), pair trees, ops counted in the backward."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("test_kernel_varlen", kernel_varlen_forward)
    AttentionMaskInterface.register("test_kernel_varlen", sdpa_mask)
    with torch.device("meta"):
        body = AutoModelForCausalLM.from_config(load_model(BUILTIN_MODEL).config,
                                                attn_implementation="test_kernel_varlen").model.train()
    inputs = varlen_model_inputs(collate(awkward_pairs(), pack=True, pad_id=0, share_prefix=True).to("meta"))
    varlen_calls = {}
    for mode in MODES:
        activation_checkpointing.enable(body, mode)
        hidden = body(**inputs, use_cache=False).last_hidden_state
        with OpCounts() as ops:
            hidden.backward(torch.ones_like(hidden))
        varlen_calls[mode] = ops.counts.get("torch_attn._varlen_attn.default", 0)
        assert ops.counts.get("torch_attn._varlen_attn_backward.default", 0) == LAYERS
    assert varlen_calls == {"off": 0, "on": LAYERS, "selective": 0, "selective-half": 0}
