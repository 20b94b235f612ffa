"""Varlen attention over pair trees (``spot_fast/varlen_attention.py``), on the CPU through the
per-segment SDPA reference that stands in for FlashAttention's ``varlen_attn``.

The segments a batch carries reproduce the attention rule entry by entry; attention through them
equals SDPA with the dense mask (outputs and the gradients of query, key and value, the gather's
backward included); a Qwen3 and a Llama model in float64 give the same sequence sums and parameter
gradients with varlen as with the dense-mask SDPA path, for trees with and without a shared prefix,
sequences, packed and padded rows, and scoring without gradients; a plain call of a varlen model is
SDPA's. On CUDA the real ``varlen_attn`` is held to the reference, forward and backward."""
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, MistralConfig, Qwen3Config

from spot_fast import varlen_attention
from spot_fast.attention import dense_mask, model_inputs
from spot_fast.batching import collate
from spot_fast.logprob_head import batch_logps
from spot_fast.varlen_attention import (VARLEN_ATTENTION, VarlenSegments, causal_varlen_attention,
                                        reference_varlen_attn, refused_by_model, register_varlen_attention)

from test_attention_masks import layouts, long_pairs
from test_pair_trees import MODELS, awkward_pairs, model_pair, sums_and_gradients


def segments_of(batch, device="cpu"):
    return VarlenSegments(batch.cu_seq_q.to(device), batch.cu_seq_k.to(device), batch.key_index.to(device),
                          batch.max_segment_queries, batch.max_segment_keys)


def visibility_of_segments(batch):
    """[tokens, tokens] bool over the flattened rows: True where a segment's query attends to a key,
    read off the segments (query i of n sees the first m - n + i + 1 of its m gathered keys)."""
    tokens = batch.input_ids.numel()
    seen = torch.zeros(tokens, tokens, dtype=torch.bool)
    bounds = zip(batch.cu_seq_q.tolist(), batch.cu_seq_q[1:].tolist(), batch.cu_seq_k.tolist(), batch.cu_seq_k[1:].tolist())
    for q0, q1, k0, k1 in bounds:
        keys = batch.key_index[k0:k1]
        for i, query in enumerate(range(q0, q1)):
            seen[query, keys[:(k1 - k0) - (q1 - q0) + i + 1]] = True
    return seen


def dense_visibility(batch):
    """The dense rule over the flattened rows (block diagonal: no row sees another)."""
    mask = dense_mask(batch)[:, 0]
    return torch.block_diag(*mask)


def all_layouts():
    yield from layouts(awkward_pairs())
    yield from layouts(long_pairs())


def describe(batch):
    return f"pack={batch.packed} trees={batch.shares_prefix} rows={batch.input_ids.shape[0]} length={batch.input_ids.shape[1]}"


def test_segments_reproduce_the_attention_rule_entry_by_entry():
    for batch in all_layouts():
        ours, rule = visibility_of_segments(batch), dense_visibility(batch)
        wrong = (ours != rule).nonzero()
        assert len(wrong) == 0, (f"{describe(batch)}: the segments let query {wrong[0, 0].item()} "
                                 f"{'see' if ours[tuple(wrong[0])] else 'miss'} key {wrong[0, 1].item()} "
                                 f"({len(wrong)} entries differ from the rule)")
        assert batch.max_segment_queries == int(batch.cu_seq_q.diff().max())
        assert batch.max_segment_keys == int(batch.cu_seq_k.diff().max())


def test_segment_work_is_the_visible_entries():
    """Causal segments compute exactly the visible (query, key) entries: no masked-out work."""
    for batch in all_layouts():
        q, k = batch.cu_seq_q.diff(), batch.cu_seq_k.diff()
        computed = int((q * (k - q) + q * (q + 1) // 2).sum())
        assert computed == int(dense_visibility(batch).sum()), describe(batch)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2)])
def test_attention_through_segments_equals_dense_mask_sdpa(heads, kv_heads):
    generator = torch.Generator().manual_seed(1)
    for batch in all_layouts():
        tokens = batch.input_ids.numel()
        leaves = [torch.randn(tokens, h, 8, generator=generator, dtype=torch.float64).requires_grad_()
                  for h in (heads, kv_heads, kv_heads)]
        upstream = torch.randn(tokens, heads, 8, generator=generator, dtype=torch.float64)
        ours = causal_varlen_attention(*leaves, segments_of(batch), scale=0.3)
        ours_grads = torch.autograd.grad((ours * upstream).sum(), leaves)
        rows, length = batch.input_ids.shape
        as_rows = lambda t: t.view(rows, length, t.shape[1], 8).transpose(1, 2)  # noqa: E731
        theirs = F.scaled_dot_product_attention(*(as_rows(t) for t in leaves), attn_mask=dense_mask(batch), scale=0.3,
                                                enable_gqa=True).transpose(1, 2).reshape(tokens, heads, 8)
        their_grads = torch.autograd.grad((theirs * upstream).sum(), leaves)
        for name, a, b in zip(("output", "dquery", "dkey", "dvalue"), (ours, *ours_grads), (theirs, *their_grads)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}, {describe(batch)}: {m}")


@pytest.mark.parametrize("name", MODELS)
def test_a_model_gives_the_dense_mask_paths_sums_and_gradients(name):
    model = model_pair(name)
    model.set_attn_implementation("sdpa")
    pairs = awkward_pairs()
    weights = torch.linspace(-1.5, 2.0, 2 * len(pairs), dtype=torch.float64)
    for pack in (True, False):
        for share in (True, False):
            batch = collate(pairs, pack=pack, pad_id=0, share_prefix=share)
            expected_sums, expected_grads = sums_and_gradients(model, batch, weights)
            model.config._attn_implementation = VARLEN_ATTENTION
            register_varlen_attention()
            try:
                sums, grads = sums_and_gradients(model, batch, weights)
            finally:
                model.config._attn_implementation = "sdpa"
            where = f"{name} pack={pack} share={share}"
            torch.testing.assert_close(sums, expected_sums, rtol=1e-12, atol=1e-10, msg=lambda m: f"sums {where}: {m}")
            for n, grad in grads.items():
                torch.testing.assert_close(grad, expected_grads[n], rtol=1e-10, atol=1e-12,
                                           msg=lambda m: f"gradient of {n} {where}: {m}")


def test_scoring_without_gradients_and_a_plain_call():
    model = model_pair("qwen3").eval()
    batch = collate(awkward_pairs(), pack=True, pad_id=0, share_prefix=True)
    register_varlen_attention()
    with torch.no_grad():
        expected = batch_logps(model, batch)
        input_ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 4, 5, 6]])
        padding = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # left padding, as generate() pads
        plain = model(input_ids, attention_mask=padding).logits
        model.config._attn_implementation = VARLEN_ATTENTION
        try:
            assert "varlen_segments" in model_inputs(batch, VARLEN_ATTENTION)
            scored = batch_logps(model, batch)
            plain_varlen = model(input_ids, attention_mask=padding).logits
        finally:
            model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(scored.chosen, expected.chosen, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(scored.rejected, expected.rejected, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(plain_varlen, plain, rtol=1e-12, atol=1e-10, msg=lambda m: f"a plain call: {m}")


def test_what_varlen_cannot_serve_is_named():
    assert refused_by_model(Qwen3Config()) is None  # a sliding window that is off
    assert refused_by_model(LlamaConfig()) is None
    assert "attention_dropout 0.1" in refused_by_model(LlamaConfig(attention_dropout=0.1))
    assert "sliding_window 4096" in refused_by_model(MistralConfig(sliding_window=4096))
    q = torch.zeros(4, 2, 8)
    with pytest.raises(ValueError, match=r"window_size \(128, 0\) is not served"):
        reference_varlen_attn(q, q, q, torch.tensor([0, 4]), torch.tensor([0, 4]), 4, 4, window_size=(128, 0))
    with pytest.raises(ValueError, match="only plain causal attention"):
        varlen_attention.varlen_attention_forward(None, q[None], q[None], q[None], None, dropout=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's varlen_attn has only a CUDA kernel")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_varlen_attn_equals_the_reference(dtype):
    """The real FlashAttention varlen kernel, bottom-right causal and GQA, against the reference in
    float64 on the same inputs: forward and the gradients of query, key and value."""
    kernel = varlen_attention.torch_varlen_attn()
    assert kernel is not None, f"torch {torch.__version__} has no varlen_attn"
    batch = collate(long_pairs(), pack=True, pad_id=0, share_prefix=True)
    tokens, generator = batch.input_ids.numel(), torch.Generator().manual_seed(2)
    inputs = [torch.randn(tokens, h, 64, generator=generator) for h in (8, 2, 2)]
    upstream = torch.randn(tokens, 8, 64, generator=generator)
    results = []
    for device, precision, attend in (("cuda", dtype, kernel), ("cpu", torch.float64, reference_varlen_attn)):
        leaves = [t.to(device, precision).requires_grad_() for t in inputs]
        out = causal_varlen_attention(*leaves, segments_of(batch, device), kernel=attend)
        grads = torch.autograd.grad((out * upstream.to(device, precision)).sum(), leaves)
        results.append([t.double().cpu() for t in (out, *grads)])
    for name, ours, reference in zip(("output", "dquery", "dkey", "dvalue"), *results):
        scale = reference.abs().max().item()
        torch.testing.assert_close(ours, reference, rtol=0, atol=4 * torch.finfo(dtype).eps * scale,
                                   msg=lambda m: f"{name} in {dtype}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the self-check runs torch's varlen_attn on CUDA")
def test_cuda_self_check_passes():
    passed, detail = varlen_attention.self_check(torch.device("cuda"))
    assert passed, detail


def top_left_causal(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, enable_gqa=False, is_causal=True):
    """A varlen kernel that aligns the causal mask top-left (query i sees keys 0..i), as SDPA's
    ``is_causal`` does: wrong for a suffix, whose keys start with its trunk."""
    outputs = []
    for q0, q1, k0, k1 in zip(cu_seq_q.tolist(), cu_seq_q[1:].tolist(), cu_seq_k.tolist(), cu_seq_k[1:].tolist()):
        out = F.scaled_dot_product_attention(query[q0:q1].transpose(0, 1), key[k0:k1].transpose(0, 1),
                                             value[k0:k1].transpose(0, 1), is_causal=True, scale=scale, enable_gqa=enable_gqa)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def oldest_signature(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False):
    """torch 2.9's ``varlen_attn``: ``is_causal``, no ``scale``, no ``enable_gqa`` (the reference underneath)."""
    return reference_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k,
                                 window_size=(-1, 0) if is_causal else (-1, -1))


def test_a_kernel_with_the_oldest_signature_gives_the_same_attention():
    """Called through ``causal_varlen_attention``, a kernel without ``window_size``, ``scale`` or
    ``enable_gqa`` (torch 2.9's) computes what the newest signature does: causal, GQA by repeated
    key/value heads, the model's scaling folded into the queries."""
    batch = collate(awkward_pairs(), pack=True, pad_id=0, share_prefix=True)
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(batch.input_ids.numel(), h, 8, generator=generator, dtype=torch.float64) for h in (6, 2, 2))
    expected = causal_varlen_attention(q, k, v, segments_of(batch), scale=0.3)
    got = causal_varlen_attention(q, k, v, segments_of(batch), scale=0.3, kernel=oldest_signature)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_the_self_check_passes_the_contract_and_fails_a_top_left_kernel():
    """The start-up self-check, run here with the reference as the kernel (bf16 on the CPU), passes it
    and fails a kernel whose causal mask is aligned top-left."""
    passed, detail = varlen_attention.self_check(torch.device("cpu"), kernel=reference_varlen_attn)
    assert passed, detail
    passed, detail = varlen_attention.self_check(torch.device("cpu"), kernel=top_left_causal)
    assert not passed, f"a top-left causal kernel passed the self-check: {detail}"


def test_auto_chooses_varlen_only_where_its_self_check_passed(monkeypatch):
    """``--attention auto``: SDPA on a CPU; on CUDA varlen when this torch has ``varlen_attn`` and the
    self-check on the device passes, else SDPA with the reason (the CUDA side is stood in for here:
    the check itself runs in the CUDA tests)."""
    from spot_fast import attention

    cuda = torch.device("cuda")
    assert attention.choose_attention("auto", torch.device("cpu"))[0] == "sdpa"
    assert attention.choose_attention("flex", cuda) == ("flex", "chosen with --attention")
    monkeypatch.setattr(attention, "self_check", lambda device: (True, "worst relative error 1e-3"))
    assert attention.choose_attention("auto", cuda) == ("varlen", "auto: varlen, its self-check passed (worst relative error 1e-3)")
    monkeypatch.setattr(attention, "self_check", lambda device: (False, "worst relative error 0.5"))
    assert attention.choose_attention("auto", cuda) == (
        "sdpa", "auto: sdpa, because varlen failed its self-check (worst relative error 0.5)")
    monkeypatch.setattr(attention, "torch_varlen_attn", lambda: None)
    assert attention.choose_attention("auto", cuda)[1].startswith("auto: sdpa, because this torch")
    assert attention.ATTENTION_BACKENDS["varlen"].unavailable(True).startswith(
        "--attention varlen needs torch.nn.attention.varlen.varlen_attn")
    assert attention.ATTENTION_BACKENDS["varlen"].unavailable(False) is None  # the CPU stand-in


def test_a_model_varlen_cannot_serve_is_refused_when_loaded():
    from spot_fast.attention import ATTENTION_BACKENDS
    model = model_pair("llama")
    assert ATTENTION_BACKENDS["varlen"].refused_by_model(model) is None
    model.config.attention_dropout = 0.1
    assert ATTENTION_BACKENDS["varlen"].refused_by_model(model) == (
        "varlen attention serves plain causal attention only; the model has attention_dropout 0.1")
