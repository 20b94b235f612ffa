"""linear_logprobs against a float64 eager reference: values, all three gradients, stats, bad input.

The triton backend runs on CUDA where there is a GPU, else in the Triton interpreter (tests/conftest.py)."""
import pytest
import torch
import triton

import spot_kernels
from spot_kernels import chunked, linear_logprobs, triton_linear_logprobs

FUSED = ["chunked", "triton"]
# Under the interpreter the forward splits the vocabulary into chunks of 1024 columns walked in tiles
# of 512: V=2500 merges three chunks, the last one ragged; N=1 is a single token.
SHAPES = [(1, 16, 2500), (37, 48, 1000), (129, 16, 257), (129, 48, 2500)]


def make_inputs(num_tokens, hidden_size, vocab_size, dtype=torch.float32, bias=True, scale=1.0, seed=0):
    """Fresh random inputs with ~20% ignored tokens and a fully ignored run of tokens (a sequence)."""
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(num_tokens, hidden_size, generator=g) * scale).to(dtype)
    weight = (torch.randn(vocab_size, hidden_size, generator=g) / hidden_size ** 0.5).to(dtype)
    b = torch.randn(vocab_size, generator=g).to(dtype) if bias else None
    targets = torch.randint(0, vocab_size, (num_tokens,), generator=g)
    targets[torch.rand(num_tokens, generator=g) < 0.2] = -100
    if num_tokens > 10:
        targets[3:9] = -100
    upstream = torch.randn(num_tokens, generator=g)
    return hidden, weight, b, targets, upstream


def device_for(backend):
    """Where ``backend`` runs in these tests: triton on CUDA where there is one (else the interpreter)."""
    return torch.device("cuda") if backend == "triton" and torch.cuda.is_available() else torch.device("cpu")


def run(backend, hidden, weight, bias, targets, upstream, backward=True, **kwargs):
    """(logp, entropy, target_is_argmax, dhidden, dweight, dbias) for loss = sum(upstream * logp), on the CPU;
    with ``backward=False``, a function that runs the backward and returns them."""
    device = device_for(backend)
    leaves = [t.detach().to(device).clone().requires_grad_(True) if t is not None else None
              for t in (hidden, weight, bias)]
    out = linear_logprobs(leaves[0], leaves[1], targets.to(device), leaves[2], backend=backend, return_stats=True,
                          **kwargs)

    def finish():
        (out.logp * upstream.to(device, out.logp.dtype)).sum().backward()
        grads = [leaf.grad.cpu() if leaf is not None else None for leaf in leaves]
        return (out.logp.detach().cpu(), out.entropy.cpu(), out.target_is_argmax.cpu(), *grads)
    return finish() if backward else finish


def reference(hidden, weight, bias, targets, upstream):
    to64 = lambda t: t.double() if t is not None else None  # noqa: E731
    return run("eager", to64(hidden), to64(weight), to64(bias), targets, upstream.double())


def assert_matches(result, expected, rtol, atol_scale):
    names = ("logp", "entropy", "target_is_argmax", "dhidden", "dweight", "dbias")
    for name, got, want in zip(names, result, expected):
        if want is None:
            assert got is None, name
            continue
        if name == "target_is_argmax":
            assert torch.equal(got, want), name
            continue
        atol = atol_scale * max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", FUSED + ["eager"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_matches_float64_reference(backend, shape, bias):
    inputs = make_inputs(*shape, bias=bias, seed=hash((shape, bias)) % 1000)
    assert_matches(run(backend, *inputs), reference(*inputs), rtol=1e-5, atol_scale=1e-5)


@pytest.mark.parametrize("backend", FUSED)
def test_large_magnitude_logits(backend):
    """Logits of magnitude ~1e3: the online log-sum-exp must not overflow or lose the target."""
    inputs = make_inputs(37, 48, 1000, scale=300.0, seed=7)
    expected = reference(*inputs)
    assert expected[0].abs().max() > 100  # the test really exercises large logits
    result = run(backend, *inputs)
    # Entropy is a difference of logits, so it inherits the fp32 logits' absolute error (~1e-7 * |z|):
    # hold it to eager fp32's own error on the same inputs instead of a relative 1e-5.
    eager_error = (run("eager", *inputs)[1].double() - expected[1]).abs().max().item()
    assert (result[1].double() - expected[1]).abs().max().item() <= 2 * eager_error + 1e-6
    assert_matches(result[:1] + (None,) + result[2:], expected[:1] + (None,) + expected[2:], rtol=1e-5, atol_scale=1e-5)


@pytest.mark.parametrize("backend", FUSED)
def test_many_chunks_and_slices(backend, monkeypatch):
    """Force several token chunks and vocab slices so the online and accumulating paths all run."""
    monkeypatch.setattr(chunked, "TILE_ELEMENTS", 32 * 300)
    monkeypatch.setattr(chunked, "TOKEN_CHUNK", 32)
    monkeypatch.setattr(triton_linear_logprobs, "BACKWARD_SLICE", 1000)
    monkeypatch.setattr(triton_linear_logprobs, "DZ_TILE_ELEMENTS", 48 * 1000)
    assert triton.cdiv(2500, triton_linear_logprobs.forward_chunk_width()) >= 3  # the forward merges chunks
    inputs = make_inputs(129, 48, 2500, seed=11)
    assert_matches(run(backend, *inputs), reference(*inputs), rtol=1e-5, atol_scale=1e-5)


@pytest.mark.parametrize("backend, backward_in_autocast", [
    ("chunked", False), ("chunked", True), ("triton", False), ("triton", True), ("eager", False)])
def test_autocast_keeps_the_kernels_precision(backend, backward_in_autocast):
    """Inside ``torch.autocast`` (bf16) the results are what they are outside it: fp32 inputs give
    fp32-accurate log-probs, entropies and gradients, not values from bf16-rounded logits. The fused
    backends' backward keeps its precision even when called inside the region (the eager backward is
    autograd's, which follows autocast there: PyTorch advises backward outside it)."""
    inputs = make_inputs(37, 48, 1000, seed=13)
    with torch.autocast(device_for(backend).type, dtype=torch.bfloat16):
        backward = run(backend, *inputs, backward=False)
        result = backward() if backward_in_autocast else None
    result = result or backward()
    assert_matches(result, reference(*inputs), rtol=1e-5, atol_scale=1e-5)


@pytest.mark.parametrize("backend", FUSED + ["eager"])
def test_only_the_first_of_tied_maxima_is_the_argmax(backend, monkeypatch):
    """``target_is_argmax`` is ``argmax == target`` (TRL's token accuracy): where head rows are copies
    (as ``resize_token_embeddings`` makes them) and their logit is the maximum, only the first copy
    counts. The copies lie in one tile, in another tile and in another vocab chunk (the interpreter's
    chunks are 1024 columns in tiles of 512; the chunked backend is forced to slices of 400). Small
    integers make every logit exact, so the copies tie whatever the summation order."""
    monkeypatch.setattr(chunked, "TILE_ELEMENTS", 64 * 400)
    monkeypatch.setattr(chunked, "TOKEN_CHUNK", 64)
    g = torch.Generator().manual_seed(14)
    hidden = torch.randint(-2, 3, (64, 16), generator=g).float()
    weight = torch.randint(-2, 3, (2500, 16), generator=g).float()
    bias = torch.randint(-2, 3, (2500,), generator=g).float()
    targets = torch.randint(0, 2500, (64,), generator=g)
    upstream = torch.randn(64, generator=g)
    copies = torch.tensor([7, 300, 900, 2100])
    weight[copies], bias[copies] = torch.full((16,), 3.0), 0.0
    hidden[:50] = 3.0  # the copies' logit, 144, is the maximum for these tokens
    targets[:40] = copies.repeat(10)
    targets[40:50] = 5  # not a maximum
    result = run(backend, hidden, weight, bias, targets, upstream)
    first = torch.zeros(64, dtype=torch.bool)
    first[:40] = targets[:40] == copies[0]
    assert torch.equal(result[2][:50], first[:50]), f"target_is_argmax of the tied tokens: {result[2][:50].int().tolist()}"
    assert_matches(result, reference(hidden, weight, bias, targets, upstream), rtol=1e-5, atol_scale=1e-5)


# Margins of the elementwise bf16 criterion, as (one rounding to the output's dtype, relative to the
# element; floor, relative to the tensor's largest reference value).
BF16_MARGINS = {"logp": (2.0 ** -23, 1e-6), "entropy": (2.0 ** -23, 1e-6), "dhidden": (2.0 ** -8, 2.0 ** -10), "dweight": (2.0 ** -8, 2.0 ** -10),
                "dbias": (2.0 ** -8, 2.0 ** -10)}


@pytest.mark.parametrize("backend", FUSED + ["eager"])
@pytest.mark.parametrize("shape", [(37, 48, 1000), (129, 48, 2500)])
def test_bf16_elementwise_no_worse_than_eager_bf16(backend, shape, monkeypatch):
    """bf16 inputs judged elementwise, as Apple's cut-cross-entropy tests do (docs/design.md section 7).

    Reference: the eager spec in float64 on the same bf16 inputs. For logp and the gradients of
    hidden, weight and bias, every element's error against it must be no worse than eager bf16's
    own error on that element plus a margin (entropy is held to the same rule as logp):
        |x - ref| <= |eager_bf16 - ref| + rounding * |ref| + floor * max|ref|
    ``rounding`` is one rounding to the output's dtype (fp32 log-probs: 2^-23; bf16 gradients:
    2^-8, since both results are rounded to bf16 once, possibly in opposite directions); ``floor``
    covers the rounding of dz to bf16 before the gradient matmuls, which eager does too but on
    slightly different values (2^-10 of the largest gradient; 1e-6 for log-probs). Eager's error
    includes its bf16 logits; the fused backends sum logits in fp32 (the interpreter upcasts the
    Triton dot), so a correct fused backend sits at or below eager on log-probs, and a log-sum-exp
    rounded to bf16 (5x eager's error) fails. Several token chunks and vocab slices are forced so
    the weight gradient is accumulated across chunks and the forward merges several vocab chunks.
    """
    monkeypatch.setattr(chunked, "TOKEN_CHUNK", 16)
    monkeypatch.setattr(triton_linear_logprobs, "DZ_TILE_ELEMENTS", 16 * 1000)
    monkeypatch.setattr(triton_linear_logprobs, "BACKWARD_SLICE", 1000)
    inputs = make_inputs(*shape, dtype=torch.bfloat16, seed=3)
    expected = reference(*inputs)
    eager = run("eager", *inputs)
    result = run(backend, *inputs)
    assert result[0].dtype == torch.float32 and result[3].dtype == torch.bfloat16
    for index, name in ((0, "logp"), (1, "entropy"), (3, "dhidden"), (4, "dweight"), (5, "dbias")):
        rounding, floor = BF16_MARGINS[name]
        want = expected[index]
        error = (result[index].double() - want).abs()
        allowed = (eager[index].double() - want).abs() + rounding * want.abs() + floor * want.abs().max()
        worst = (error - allowed).argmax()
        assert bool((error <= allowed).all()), (
            f"{name}: element {worst.item()} error {error.flatten()[worst].item():.3g} exceeds eager bf16's "
            f"{(eager[index].double() - want).abs().flatten()[worst].item():.3g} + margin; "
            f"{int((error > allowed).sum())} of {error.numel()} elements over")


HOST_SYNCS = ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@pytest.mark.parametrize("backend", FUSED)
def test_unchecked_entry_never_reads_tensor_values_on_the_host(backend, monkeypatch):
    """``linear_logprobs_unchecked`` (the trainer's path) must not synchronise with the device:
    while its forward and backward run, every Tensor method that reads a value on the host raises."""
    hidden, weight, bias, targets, upstream = make_inputs(37, 48, 1000, seed=13)
    targets = targets.clamp(min=0)  # no ignored token, by the entry's contract
    device = device_for(backend)
    leaves = [t.to(device).clone().requires_grad_(True) for t in (hidden, weight, bias)]

    def forbidden(name):
        def raise_host_sync(*args, **kwargs):
            raise AssertionError(f"host synchronisation through Tensor.{name}")
        return raise_host_sync

    with monkeypatch.context() as patched:
        for name in HOST_SYNCS:
            patched.setattr(torch.Tensor, name, forbidden(name))
        patched.setattr(torch, "nonzero", forbidden("torch.nonzero"))
        out = spot_kernels.linear_logprobs_unchecked(leaves[0], leaves[1], targets.to(device), leaves[2],
                                                     backend=backend, return_stats=True)
        (out.logp * upstream.to(device)).sum().backward()
    result = tuple(t.cpu() for t in (out.logp.detach(), out.entropy, out.target_is_argmax, *(leaf.grad for leaf in leaves)))
    assert_matches(result, reference(hidden, weight, bias, targets, upstream), rtol=1e-5, atol_scale=1e-5)


@pytest.mark.parametrize("backend", FUSED + ["eager"])
def test_all_tokens_ignored(backend):
    hidden, weight, bias, targets, upstream = make_inputs(37, 16, 257)
    targets[:] = -100
    logp, entropy, argmax, dhidden, dweight, dbias = run(backend, hidden, weight, bias, targets, upstream)
    assert torch.equal(logp, torch.zeros(37)) and torch.equal(entropy, torch.zeros(37)) and not argmax.any()
    for grad in (dhidden, dweight, dbias):
        assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("backend", FUSED)
def test_custom_ignore_index_int32_targets_and_noncontiguous_hidden(backend):
    hidden, weight, bias, targets, upstream = make_inputs(37, 48, 1000, seed=5)
    targets = torch.where(targets == -100, torch.tensor(999), targets)  # 999 is ignored below
    expected = reference(hidden, weight, bias, torch.where(targets == 999, -100, targets), upstream)
    hidden_t = hidden.T.contiguous().T  # same values, column-major strides
    assert not hidden_t.is_contiguous()
    result = run(backend, hidden_t, weight, bias, targets.int(), upstream, ignore_index=999)
    assert_matches(result, expected, rtol=1e-5, atol_scale=1e-5)


def test_weight_grad_only_when_hidden_is_frozen():
    hidden, weight, _, targets, _ = make_inputs(37, 48, 1000)
    w = weight.clone().requires_grad_(True)
    linear_logprobs(hidden, w, targets, backend="chunked").sum().backward()
    w64 = weight.double().requires_grad_(True)
    linear_logprobs(hidden.double(), w64, targets, backend="eager").sum().backward()
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-6)


def test_auto_picks_chunked_on_cpu():
    assert spot_kernels.resolve_backend("auto", torch.device("cpu"), torch.float32) == "chunked"


@pytest.mark.parametrize("mutate, error, message", [
    (lambda h, w, t: (h[:, :-1], w, t), ValueError, "hidden size mismatch"),
    (lambda h, w, t: (h, w, t[:-1]), ValueError, "targets must have shape"),
    (lambda h, w, t: (h, w, t.float()), TypeError, "targets must be int64"),
    (lambda h, w, t: (h, w.double(), t), TypeError, "weight dtype"),
    (lambda h, w, t: (h, w, torch.where(t == 0, 5000, t).index_fill(0, torch.tensor([2]), 5000)), ValueError, r"targets\[2\] = 5000 is outside"),
    (lambda h, w, t: (h, w, t.index_fill(0, torch.tensor([4]), -7)), ValueError, r"targets\[4\] = -7"),
    (lambda h, w, t: (h[:0], w, t[:0]), ValueError, "no tokens"),
    (lambda h, w, t: (h[None], w, t), ValueError, r"hidden must be \[N, H\]"),
    (lambda h, w, t: (h.int(), w.int(), t), TypeError, "floating-point"),
])
@pytest.mark.parametrize("backend", FUSED + ["eager"])
def test_bad_input_is_named(mutate, error, message, backend):
    hidden, weight, _, targets, _ = make_inputs(37, 48, 1000)
    targets = targets.clamp(min=0)
    h, w, t = mutate(hidden, weight, targets)
    with pytest.raises(error, match=message):
        linear_logprobs(h, w, t, backend=backend)


def test_bad_bias_and_backend_are_named():
    hidden, weight, _, targets, _ = make_inputs(37, 48, 1000)
    with pytest.raises(ValueError, match="bias must have shape"):
        linear_logprobs(hidden, weight, targets, bias=torch.zeros(999))
    with pytest.raises(ValueError, match="unknown backend"):
        linear_logprobs(hidden, weight, targets, backend="cuda")
    with pytest.raises(TypeError, match="does not support float64"):
        linear_logprobs(hidden.double(), weight.double(), targets, backend="triton")
