"""``linear_logprobs``: per-token log-probs of targets under an LM head, without materializing logits.

    logp[i] = z[i, t_i] - logsumexp_v z[i, v],   z = hidden @ weight.T (+ bias),   0 where t_i is ignored

The public entry point validates its inputs, picks a backend and, for the fused backends, drops the
ignored tokens (prompt, padding) before any matmul so they cost nothing. Every backend runs with
autocast off, forward and backward: the precision is the kernel's own (products of the input values
summed in fp32) inside a ``torch.autocast`` region as outside it, where autocast would otherwise
round the chunked and eager logits (and the backward's matmuls) to bf16. Backends share one
signature and one result:
- ``triton``: fused Triton kernels (CUDA; or the CPU under TRITON_INTERPRET=1),
- ``chunked``: bounded-memory PyTorch (any device),
- ``eager``: materialized logits, the specification.
"""
import contextlib
from typing import Callable, NamedTuple, Optional

import torch

from . import chunked
from .backward import accumulate_gradients
from .eager import eager_linear_logprobs

BACKENDS = ("auto", "triton", "chunked", "eager")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TokenLogprobs(NamedTuple):
    """Per-token outputs: ``logp`` (fp32, differentiable), and, without gradients, ``entropy`` (fp32)
    of the model's next-token distribution and ``target_is_argmax`` (bool, for token accuracy)."""
    logp: torch.Tensor
    entropy: torch.Tensor
    target_is_argmax: torch.Tensor


def triton_available(device):
    """True where the Triton backend can run: CUDA tensors, or any tensors under TRITON_INTERPRET=1."""
    try:
        from . import triton_linear_logprobs
    except ImportError:
        return False
    return device.type == "cuda" or triton_linear_logprobs.interpreting()


def autocast_off(device):
    """A context in which ops on ``device`` run in the dtypes they are given (no autocast)."""
    if not torch.amp.is_autocast_available(device.type):  # e.g. meta tensors: nothing to turn off
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


class FusedBackend(NamedTuple):
    """What a fused backend supplies to ``_FusedLinearLogprobs``:
    ``forward(hidden, weight, bias, targets, with_stats) -> (logp, lse, entropy, target_is_argmax)``,
    ``dlogits``, the dz tile function of ``backward.accumulate_gradients``, and
    ``backward_chunks(num_tokens, vocab_size) -> (token_chunk, vocab_chunk)``, the tiles it works on."""
    forward: Callable
    dlogits: Callable
    backward_chunks: Callable


def _fused_backend(name):
    if name == "chunked":
        return FusedBackend(chunked.chunked_forward, chunked.torch_dlogits, chunked.chunk_sizes)
    from . import triton_linear_logprobs as fused
    return FusedBackend(fused.triton_forward, fused.triton_dlogits, fused.backward_chunk_sizes)


class _FusedLinearLogprobs(torch.autograd.Function):
    """Autograd wrapper of the fused backends. Saves hidden, weight, bias, targets (all inputs: no
    copies), the indices of the kept tokens and lse of those tokens: O(N) beyond the inputs. The
    backward is ``backward.accumulate_gradients`` driving the backend's dz tile function.

    With ``ignore_index`` None (``linear_logprobs_unchecked``) neither direction synchronises with
    the host: no token selection, and every loop bound comes from shapes (on a GPU the Triton
    autotuner still benchmarks once per tuning key, on the first call)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, backend, with_stats):
        forward_fn = _fused_backend(backend).forward
        kept = None
        if ignore_index is not None:  # None: the caller guarantees no ignored token (no host sync)
            keep = targets != ignore_index
            kept = None if bool(keep.all()) else keep.nonzero().squeeze(1)
        h, t = (hidden, targets) if kept is None else (hidden.index_select(0, kept), targets.index_select(0, kept))
        if h.shape[0] == 0:  # every token ignored: nothing to compute
            zeros = h.new_zeros(0, dtype=torch.float32)
            logp_kept, lse, entropy_kept, argmax_kept = zeros, zeros, zeros, zeros.bool()
        else:
            logp_kept, lse, entropy_kept, argmax_kept = forward_fn(h, weight, bias, t, with_stats)
        ctx.save_for_backward(hidden, weight, bias, targets, kept, lse)
        ctx.backend = backend
        num_tokens = hidden.shape[0]
        logp = _scatter(logp_kept, kept, num_tokens)
        if not with_stats:
            return logp, None, None
        entropy = _scatter(entropy_kept, kept, num_tokens)
        target_is_argmax = _scatter(argmax_kept, kept, num_tokens)
        ctx.mark_non_differentiable(entropy, target_is_argmax)
        return logp, entropy, target_is_argmax

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy, _grad_argmax):
        with autocast_off(grad_logp.device):
            return _FusedLinearLogprobs._backward(ctx, grad_logp)

    @staticmethod
    def _backward(ctx, grad_logp):
        hidden, weight, bias, targets, kept, lse = ctx.saved_tensors
        fused = _fused_backend(ctx.backend)
        needs = ctx.needs_input_grad[:3]
        num_tokens, hidden_size = hidden.shape
        grad = grad_logp.to(lse.dtype).contiguous()  # fp32 (float64 for float64 inputs), as the forward
        if kept is not None:
            hidden, targets, grad = hidden.index_select(0, kept), targets.index_select(0, kept), grad.index_select(0, kept)
        if lse.numel() == 0:
            dhidden, dweight, dbias = (torch.zeros_like(x) if need and x is not None else None
                                       for x, need in zip((hidden, weight, bias), needs))
        else:
            token_chunk, vocab_chunk = fused.backward_chunks(hidden.shape[0], weight.shape[0])
            dhidden, dweight, dbias = accumulate_gradients(hidden, weight, bias, targets, lse, grad, needs,
                                                           fused.dlogits, token_chunk, vocab_chunk)
        if dhidden is not None and kept is not None:
            dhidden = dhidden.new_zeros(num_tokens, hidden_size).index_copy_(0, kept, dhidden)
        return dhidden, dweight, dbias, None, None, None, None


def _scatter(values, kept, num_tokens):
    if kept is None:
        return values
    return torch.zeros(num_tokens, dtype=values.dtype, device=values.device).index_copy_(0, kept, values)


def _validate(hidden, weight, targets, bias, backend):
    for name, tensor in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [N, H] and weight [V, H]; got hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}")
    num_tokens, hidden_size = hidden.shape
    vocab_size = weight.shape[0]
    if num_tokens == 0:
        raise ValueError("hidden has no tokens (N == 0)")
    if weight.shape[1] != hidden_size:
        raise ValueError(f"hidden size mismatch: hidden {tuple(hidden.shape)} vs weight {tuple(weight.shape)}")
    if targets.shape != (num_tokens,):
        raise ValueError(f"targets must have shape ({num_tokens},) to match hidden {tuple(hidden.shape)}; got {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be int64 or int32; got {targets.dtype}")
    if hidden.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"hidden must be a floating-point tensor; got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}; cast one of them")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.shape != (vocab_size,):
            raise ValueError(f"bias must have shape ({vocab_size},) to match weight {tuple(weight.shape)}; got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias dtype {bias.dtype} differs from hidden dtype {hidden.dtype}")
    devices = {t.device for t in (hidden, weight, targets) + ((bias,) if bias is not None else ())}
    if len(devices) > 1:
        raise ValueError(f"inputs are on different devices: {sorted(str(d) for d in devices)}")


def _check_targets(targets, vocab_size, ignore_index):
    bad = ((targets < 0) | (targets >= vocab_size)) & (targets != ignore_index)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets[{index}] = {int(targets[index])} is outside [0, {vocab_size}) "
                         f"and is not ignore_index ({ignore_index})")


def resolve_backend(backend, device, dtype):
    """The concrete backend ``auto`` means here: ``triton`` on CUDA, ``chunked`` elsewhere."""
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) and dtype != torch.float64 else "chunked"
    if backend == "triton":
        if not triton_available(device):
            raise ValueError(f"backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1); tensors are on {device}")
        if dtype == torch.float64:
            raise TypeError("backend 'triton' does not support float64; use 'chunked' or 'eager'")
    return backend


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    bias: Optional[torch.Tensor] = None, ignore_index: int = -100,
                    backend: str = "auto", return_stats: bool = False):
    """Log-probability of each target token under the linear head ``(weight, bias)``.

    Args:
        hidden: [N, H] final hidden states (fp32, bf16 or fp16).
        weight: [V, H] LM-head weight, same dtype as ``hidden``.
        targets: [N] int64/int32 token ids in [0, V), or ``ignore_index``.
        bias: optional [V] bias.
        ignore_index: targets equal to it get log-prob 0 and no gradient; they are dropped before
            any matmul on the fused backends.
        backend: ``auto`` (``triton`` on CUDA, ``chunked`` elsewhere), ``triton``, ``chunked`` or ``eager``.
        return_stats: also return per-token entropy and target-is-argmax (no gradients; same pass).

    Returns:
        [N] fp32 log-probs, differentiable w.r.t. hidden, weight and bias; or a ``TokenLogprobs``
        when ``return_stats``. Non-contiguous inputs are made contiguous (a copy).
    """
    _validate(hidden, weight, targets, bias, backend)
    _check_targets(targets, weight.shape[0], ignore_index)
    return _dispatch(hidden, weight, targets, bias, ignore_index, backend, return_stats)


def linear_logprobs_unchecked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              bias: Optional[torch.Tensor] = None, backend: str = "auto",
                              return_stats: bool = False):
    """``linear_logprobs`` for a caller that guarantees valid input, without validation and without
    host synchronisation: the trainer's hot path.

    The caller guarantees what ``linear_logprobs`` would check (shapes, dtypes, one device) and that
    every target lies in [0, V): there are no ignored tokens (drop them before calling). Invalid input
    gives undefined results, not an error.
    """
    return _dispatch(hidden, weight, targets, bias, None, backend, return_stats)


def _dispatch(hidden, weight, targets, bias, ignore_index, backend, return_stats):
    with autocast_off(hidden.device):
        return _dispatch_backend(hidden, weight, targets, bias, ignore_index, backend, return_stats)


def _dispatch_backend(hidden, weight, targets, bias, ignore_index, backend, return_stats):
    backend = resolve_backend(backend, hidden.device, hidden.dtype)
    hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
    bias = bias.contiguous() if bias is not None else None
    if backend == "eager":
        logp, entropy, target_is_argmax = eager_linear_logprobs(
            hidden, weight, targets, bias, -100 if ignore_index is None else ignore_index, return_stats)
    else:
        logp, entropy, target_is_argmax = _FusedLinearLogprobs.apply(
            hidden, weight, bias, targets, ignore_index, backend, return_stats)
    if return_stats:
        return TokenLogprobs(logp, entropy, target_is_argmax)
    return logp
