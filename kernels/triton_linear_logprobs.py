"""Triton kernels for ``linear_logprobs``: the LM-head matmul fused with log-softmax and target gather.

Algorithm (z = hidden @ weight.T + bias; nothing of size [N, V] is ever stored):

Forward, one program per block of BLOCK_N tokens:
    for each vocab block of BLOCK_V columns:
        z_blk = sum over H in BLOCK_H steps of dot(hidden_blk, weight_blk.T)   (fp32 accumulator)
        online log-sum-exp: m' = max(m, rowmax(z_blk)); s = s * exp(m - m') + rowsum(exp(z_blk - m'))
        target logit picked where the column equals the row's target
        (stats) a = exp(m - m') * (a + (m - m') * s) + rowsum(exp(z_blk - m') * (z_blk - m'))
    lse = m + log(s); logp = z_t - lse; entropy = log(s) - a / s; target_is_argmax = z_t >= m
Only lse[N] is saved for the backward.

Backward, for one vocab slice [v0, v1) at a time (driver: ``chunked.accumulate_gradients``):
    ``_dlogits_kernel`` recomputes each [BLOCK_N, BLOCK_V] logit tile exactly as the forward did and
    writes dz = g * (onehot(t) - exp(z - lse)) in the input dtype into a [N, v1 - v0] slice buffer;
    then two dense matmuls finish the slice: dweight[v0:v1] = dz.T @ hidden (written once, fp32
    accumulation inside the matmul, no atomics) and dhidden += dz @ weight[v0:v1] (fp32 accumulator).
The slice width is chosen so the slice buffer stays within SLICE_ELEMENTS, independent of V.
FLOPs: forward 2NHV, recompute 2NHV, two gradient matmuls 4NHV: the 8NHV floor of DESIGN.md section 8.

Invariants: every pointer offset is int64 (N * V overflows int32 at real sizes); softmax math is fp32;
fp32 inputs use IEEE dot products (no TF32). Under TRITON_INTERPRET=1 the dot operands are upcast to
fp32 (the interpreter's low-precision dot is wrong) and one fixed configuration is used (autotuning
needs a GPU driver).
"""
import os

import torch
import triton
import triton.language as tl

from .chunked import accumulate_gradients

# Elements of the [N, slice] dz buffer of the backward (64 MiB in bf16).
SLICE_ELEMENTS = 1 << 25


def interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


def _config():
    """(BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages): large tiles in the interpreter keep it fast."""
    if interpreting():
        return 64, 1024, 64, 1, 1
    return 64, 128, 64, 4, 3


@triton.jit
def _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H,
                stride_hidden, stride_weight,
                HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """fp32 [BLOCK_N, BLOCK_V] tile of hidden[rows] @ weight[cols].T (+ bias[cols]); rows, cols int64."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_mask = ks < H
        h = tl.load(hidden_ptr + rows[:, None] * stride_hidden + ks[None, :],
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(weight_ptr + cols[:, None] * stride_weight + ks[None, :],
                    mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _forward_kernel(hidden_ptr, weight_ptr, bias_ptr, targets_ptr,
                    logp_ptr, lse_ptr, entropy_ptr, argmax_ptr,
                    N, V, H, stride_hidden, stride_weight,
                    HAS_BIAS: tl.constexpr, WITH_STATS: tl.constexpr, UPCAST: tl.constexpr,
                    PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = rows < N
    targets = tl.load(targets_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    running_max = tl.full((BLOCK_N,), -1e30, dtype=tl.float32)  # finite: 0 * (m - m') stays 0
    sum_exp = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sum_exp_z = tl.zeros((BLOCK_N,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_mask = cols < V
        z = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H,
                        stride_hidden, stride_weight, HAS_BIAS, UPCAST, PRECISION,
                        BLOCK_N, BLOCK_V, BLOCK_H)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(z, axis=1))
        rescale = tl.exp(running_max - new_max)
        p = tl.exp(z - new_max[:, None])
        if WITH_STATS:  # sum exp(z - m) * (z - m), kept relative to the running max for precision
            centered = tl.where(col_mask[None, :], z - new_max[:, None], 0.0)
            sum_exp_z = (sum_exp_z + (running_max - new_max) * sum_exp) * rescale + tl.sum(p * centered, axis=1)
        sum_exp = sum_exp * rescale + tl.sum(p, axis=1)
        is_target = cols[None, :] == targets[:, None]
        target_logit += tl.sum(tl.where(is_target, z, 0.0), axis=1)
        running_max = new_max
    lse = running_max + tl.log(sum_exp)
    tl.store(logp_ptr + rows, target_logit - lse, mask=row_mask)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    if WITH_STATS:
        tl.store(entropy_ptr + rows, tl.log(sum_exp) - sum_exp_z / sum_exp, mask=row_mask)
        tl.store(argmax_ptr + rows, (target_logit >= running_max).to(tl.int8), mask=row_mask)


@triton.jit
def _dlogits_kernel(hidden_ptr, weight_ptr, bias_ptr, targets_ptr, lse_ptr, grad_ptr, dz_ptr,
                    N, H, v0, slice_width, stride_hidden, stride_weight,
                    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_n = tl.program_id(0).to(tl.int64)
    pid_v = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    local_cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    cols = v0 + local_cols
    row_mask = rows < N
    col_mask = local_cols < slice_width
    z = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H,
                    stride_hidden, stride_weight, HAS_BIAS, UPCAST, PRECISION,
                    BLOCK_N, BLOCK_V, BLOCK_H)
    targets = tl.load(targets_ptr + rows, mask=row_mask, other=-1).to(tl.int64)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    grad = tl.load(grad_ptr + rows, mask=row_mask, other=0.0)
    onehot = (cols[None, :] == targets[:, None]).to(tl.float32)
    dz = grad[:, None] * (onehot - tl.exp(z - lse[:, None]))
    tl.store(dz_ptr + rows[:, None] * slice_width + local_cols[None, :],
             dz.to(dz_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def _kernel_flags(hidden, bias):
    return dict(
        HAS_BIAS=bias is not None,
        UPCAST=interpreting(),
        PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32",
    )


def triton_forward(hidden, weight, bias, targets, with_stats):
    """Returns (logp, lse, entropy, target_is_argmax) for non-ignored tokens; extras None unless asked."""
    num_tokens, hidden_size = hidden.shape
    vocab_size = weight.shape[0]
    block_n, block_v, block_h, num_warps, num_stages = _config()
    logp = torch.empty(num_tokens, dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(logp)
    entropy = torch.empty_like(logp) if with_stats else lse  # placeholder pointer when unused
    argmax = torch.empty(num_tokens, dtype=torch.int8, device=hidden.device) if with_stats else lse
    _forward_kernel[(triton.cdiv(num_tokens, block_n),)](
        hidden, weight, bias, targets, logp, lse, entropy, argmax,
        num_tokens, vocab_size, hidden_size, hidden.stride(0), weight.stride(0),
        WITH_STATS=with_stats, BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h,
        num_warps=num_warps, num_stages=num_stages, **_kernel_flags(hidden, bias),
    )
    if not with_stats:
        return logp, lse, None, None
    return logp, lse, entropy, argmax.bool()


def triton_dlogits(hidden, weight, bias, targets, lse, grad, v0, v1):
    """The [len(hidden), v1 - v0] tile of dz, computed by ``_dlogits_kernel`` in the input dtype."""
    num_tokens, hidden_size = hidden.shape
    block_n, block_v, block_h, num_warps, num_stages = _config()
    dz = torch.empty(num_tokens, v1 - v0, dtype=hidden.dtype, device=hidden.device)
    grid = (triton.cdiv(num_tokens, block_n), triton.cdiv(v1 - v0, block_v))
    _dlogits_kernel[grid](
        hidden, weight, bias, targets, lse, grad, dz,
        num_tokens, hidden_size, v0, v1 - v0, hidden.stride(0), weight.stride(0),
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h,
        num_warps=num_warps, num_stages=num_stages, **_kernel_flags(hidden, bias),
    )
    return dz


def triton_backward(hidden, weight, bias, targets, lse, grad, needs):
    num_tokens, vocab_size = hidden.shape[0], weight.shape[0]
    block_v = _config()[1]
    slice_width = max(block_v, SLICE_ELEMENTS // max(num_tokens, 1) // block_v * block_v)
    return accumulate_gradients(hidden, weight, bias, targets, lse, grad, needs, triton_dlogits,
                                token_chunk=num_tokens, vocab_chunk=min(vocab_size, slice_width))
