"""Triton kernels for ``linear_logprobs``: the LM-head matmul fused with log-softmax and target gather.

Algorithm (z = hidden @ weight.T + bias; nothing of size [N, V] is ever stored):

Forward, two kernels.
1. ``_partial_forward_kernel``, one program per (token block, vocab chunk): BLOCK_N tokens against
   the ``chunk_width`` columns of one chunk, walked in BLOCK_V tiles; each tile is a K loop over H in
   BLOCK_H steps into an fp32 accumulator. Per row it keeps, online over the chunk's tiles,
       m' = max(m, rowmax(z));  s = s * exp(m - m') + rowsum(exp(z - m'))
       a  = exp(m - m') * (a + (m - m') * s) + rowsum(exp(z - m') * (z - m'))   (stats only)
       j  = the tile's first column holding rowmax(z) where rowmax(z) > m, else j      (stats only)
       t += z where the column is the target (0 if the target is in another chunk)
   and writes (m, s, t, a, j) of the chunk to ``partials`` [5, num_chunks, N] (fp32; the column j is
   exact in fp32 for V <= 2^24).
   The strict ``>`` keeps the first of tied maxima, as ``torch.argmax`` does.
2. ``_merge_kernel``, one program per MERGE_BLOCK tokens, folds the chunks in the fixed order
   c = 0, 1, ... with the same update (a chunk is a tile whose sums are already reduced):
       M = max(m, m_c);  s = s * exp(m - M) + s_c * exp(m_c - M)
       a = exp(m - M) * (a + (m - M) * s) + exp(m_c - M) * (a_c + (m_c - M) * s_c);  t += t_c
       j = j_c where m_c > m (a later chunk wins only with a larger maximum)
   then lse = M + log(s), logp = t - lse, entropy = log(s) - a / s, target_is_argmax = (j == target):
   the target is the first maximum, as ``argmax`` counts it (TRL's token accuracy).
   The fold order is fixed, so the result is reproducible bit for bit: no atomics, no locks.
Splitting the vocabulary keeps every SM busy at any N (a few thousand completion tokens give only
tens of token blocks). Programs run in grouped order (Triton's matmul tutorial): GROUP_N consecutive
token blocks take the same vocab chunk before the next chunk starts, so a wave of programs shares
weight tiles and hidden blocks in L2. Only lse[N] is saved for the backward; ``partials`` is
12 * ceil(V / chunk_width) bytes per token (20 with the statistics), freed after the merge.

Backward: ``backward.accumulate_gradients`` over vocab slices of BACKWARD_SLICE columns and token
chunks that keep the dz tile within DZ_TILE_ELEMENTS. ``_dlogits_kernel`` recomputes each
[BLOCK_N, BLOCK_V] logit tile exactly as the forward does and writes
dz = g * (onehot(t) - exp(z - lse)) in the input dtype; its grid puts the vocab axis first (the
fastest-varying program id), so the programs of a wave share one block of ``hidden`` in L2. The two
gradient matmuls of the driver accumulate in fp32 inside the matmul.
FLOPs: forward 2NHV, recompute 2NHV, two gradient matmuls 4NHV: the 8NHV floor of docs/design.md section 8.

Tile configurations: under TRITON_INTERPRET=1 one fixed configuration with large tiles (the
interpreter cannot autotune: it has no GPU driver); fp32 inputs one configuration of their own
(IEEE dot products on FMA units, tiles small enough not to spill registers); bf16/fp16 a small
autotune space per architecture (sm_90 and later, sm_80), tuned once per N bucket (powers of two
from 1024 to 32768 tokens), V, H, bias, stats and dtype. N, V and the slice width are not
specialized on, so one binary per configuration serves every shape, ragged ones included. The
ahead-of-time compile test (tests/test_kernel_compile.py) compiles every configuration for sm_90
and sm_80, holds every kernel to zero register spills and the sm_90 bf16/fp16 kernels to wgmma.

Invariants: every pointer offset is int64 (N * V overflows int32 at real sizes); loads use
in-range row and column indices (out-of-range rows and columns are clamped, then masked out of the
results); softmax math is fp32; fp32 inputs use IEEE dot products (no TF32). Under TRITON_INTERPRET=1
the dot operands are upcast to fp32 (the interpreter's low-precision dot is wrong). Launches do
not synchronise with the host, except that the first launch per tuning key on a GPU benchmarks the
configurations of its space (Triton's autotuner).
"""
import functools
import os

import torch
import triton
import triton.language as tl
from triton.runtime.driver import driver

# Backward: vocab columns per slice, and elements of the dz tile (64 MiB in bf16), which bounds the token chunk.
BACKWARD_SLICE = 8192
DZ_TILE_ELEMENTS = 1 << 25
# Row stride of the dz tile is padded to a multiple of this, so every slice width launches one binary.
DZ_ROW_ALIGN = 64
MERGE_BLOCK = 1024
# The largest vocabulary whose column indices fp32 holds exactly (the argmax field of ``partials``).
MAX_EXACT_COLUMN = 1 << 24
# Initial running max: finite, so the first rescale is exp(-huge) = 0 and 0 * (m - m') stays 0.
NO_LOGIT_YET = tl.constexpr(-1e30)


def interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


def forward_chunk_width():
    """Vocab columns per forward program: a multiple of every BLOCK_V in the configurations."""
    return 1024 if interpreting() else 4096


def n_bucket(num_tokens):
    """The autotuning key for N: the power of two at or above it, clamped to [1024, 32768]."""
    return min(1 << 15, max(1 << 10, 1 << (num_tokens - 1).bit_length()))


def _config(block_n, block_v, block_h, num_warps, num_stages, **extra):
    return triton.Config(dict(BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, **extra),
                         num_warps=num_warps, num_stages=num_stages)


# Configurations per kernel, by config set (see ``config_set``).
CONFIGS = {
    "interpreter": {
        "forward": [_config(64, 512, 64, 1, 1, GROUP_N=4)],
        "dlogits": [_config(64, 512, 64, 1, 1)],
    },
    "fp32": {
        "forward": [_config(64, 64, 32, 4, 3, GROUP_N=8)],
        "dlogits": [_config(64, 64, 32, 4, 2)],
    },
    "sm90": {
        "forward": [_config(128, 256, 64, 8, 3, GROUP_N=8), _config(128, 128, 64, 8, 4, GROUP_N=8)],
        "dlogits": [_config(128, 128, 64, 8, 4), _config(64, 128, 64, 4, 4)],
    },
    "sm80": {
        "forward": [_config(128, 128, 64, 8, 3, GROUP_N=8), _config(64, 128, 64, 4, 4, GROUP_N=8)],
        "dlogits": [_config(128, 128, 64, 8, 4), _config(64, 128, 64, 4, 4)],
    },
}
TUNING_KEYS = {"forward": ["N_BUCKET", "V", "H", "HAS_BIAS", "WITH_STATS"], "dlogits": ["N_BUCKET", "V", "H", "HAS_BIAS"]}


def config_set(dtype):
    """Which configurations launch here: ``interpreter``, ``fp32``, ``sm90`` (arch >= 90) or ``sm80``."""
    if interpreting():
        return "interpreter"
    if dtype == torch.float32:
        return "fp32"
    return "sm90" if driver.active.get_current_target().arch >= 90 else "sm80"


@triton.jit
def _logit_tile(hidden_ptrs, weight_ptr, bias_ptr, cols, H, stride_weight,
                HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """fp32 [BLOCK_N, BLOCK_V] tile of hidden[rows] @ weight[cols].T (+ bias[cols]).

    ``hidden_ptrs`` [BLOCK_N, BLOCK_H] point at the first BLOCK_H features of in-range rows; ``cols``
    (int64) are in-range columns. The pointers are built once and advanced by BLOCK_H per K step.
    """
    ks = tl.arange(0, BLOCK_H)
    weight_ptrs = weight_ptr + cols[None, :] * stride_weight + ks[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        k_mask = ks < H - k0
        h = tl.load(hidden_ptrs, mask=k_mask[None, :], other=0.0)
        w = tl.load(weight_ptrs, mask=k_mask[:, None], other=0.0)
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
        hidden_ptrs += BLOCK_H
        weight_ptrs += BLOCK_H
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    return acc


@triton.jit(do_not_specialize=["N", "V", "num_chunks"])
def _partial_forward_kernel(hidden_ptr, weight_ptr, bias_ptr, targets_ptr, partials_ptr,
                            N, V, H, stride_hidden, stride_weight, chunk_width, num_chunks, N_BUCKET,
                            HAS_BIAS: tl.constexpr, WITH_STATS: tl.constexpr, UPCAST: tl.constexpr,
                            PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                            BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr):
    # Grouped order: GROUP_N token blocks (fastest) x all chunks, then the next GROUP_N token blocks.
    pid = tl.program_id(0)
    num_token_blocks = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_N * num_chunks
    first_block = (pid // programs_per_group) * GROUP_N
    group_blocks = tl.minimum(num_token_blocks - first_block, GROUP_N)
    within = pid % programs_per_group
    token_block = (first_block + within % group_blocks).to(tl.int64)
    chunk = (within // group_blocks).to(tl.int64)

    rows = token_block * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = rows < N
    rows = tl.where(row_mask, rows, 0)
    hidden_ptrs = hidden_ptr + rows[:, None] * stride_hidden + tl.arange(0, BLOCK_H)[None, :]
    targets = tl.load(targets_ptr + rows).to(tl.int64)
    chunk_start = chunk * chunk_width
    chunk_end = tl.minimum(chunk_start + chunk_width, V)
    running_max = tl.full((BLOCK_N,), NO_LOGIT_YET, dtype=tl.float32)
    sum_exp = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sum_exp_z = tl.zeros((BLOCK_N,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
    first_argmax = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for v0 in range(chunk_start, chunk_end, BLOCK_V):
        # Tile-local int32 column indices for the masks and the target test (int64 only in addresses).
        local_cols = tl.arange(0, BLOCK_V)
        col_mask = local_cols < (chunk_end - v0).to(tl.int32)
        local_targets = tl.where((targets >= v0) & (targets < v0 + BLOCK_V), targets - v0, -1).to(tl.int32)
        z = _logit_tile(hidden_ptrs, weight_ptr, bias_ptr, v0 + tl.where(col_mask, local_cols, 0).to(tl.int64), H,
                        stride_weight, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        if WITH_STATS:  # the maximum and its first column in one reduction
            tile_max, tile_first = tl.max(z, axis=1, return_indices=True, return_indices_tie_break_left=True)
        else:
            tile_max = tl.max(z, axis=1)
        new_max = tl.maximum(running_max, tile_max)
        rescale = tl.exp(running_max - new_max)
        p = tl.exp(z - new_max[:, None])
        if WITH_STATS:  # sum exp(z - m) * (z - m), kept relative to the running max for precision
            centered = tl.where(col_mask[None, :], z - new_max[:, None], 0.0)
            sum_exp_z = (sum_exp_z + (running_max - new_max) * sum_exp) * rescale + tl.sum(p * centered, axis=1)
            first_argmax = tl.where(tile_max > running_max, v0 + tile_first.to(tl.int64), first_argmax)
        sum_exp = sum_exp * rescale + tl.sum(p, axis=1)
        target_logit += tl.sum(tl.where(local_cols[None, :] == local_targets[:, None], z, 0.0), axis=1)
        running_max = new_max
    field_stride = num_chunks.to(tl.int64) * N
    out = partials_ptr + chunk * N + rows
    tl.store(out, running_max, mask=row_mask)
    tl.store(out + field_stride, sum_exp, mask=row_mask)
    tl.store(out + 2 * field_stride, target_logit, mask=row_mask)
    if WITH_STATS:
        tl.store(out + 3 * field_stride, sum_exp_z, mask=row_mask)
        tl.store(out + 4 * field_stride, first_argmax.to(tl.float32), mask=row_mask)


@triton.jit(do_not_specialize=["N", "num_chunks"])
def _merge_kernel(partials_ptr, targets_ptr, logp_ptr, lse_ptr, entropy_ptr, argmax_ptr, N, num_chunks,
                  WITH_STATS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    row_mask = rows < N
    field_stride = num_chunks.to(tl.int64) * N
    running_max = tl.full((BLOCK,), NO_LOGIT_YET, dtype=tl.float32)
    sum_exp = tl.zeros((BLOCK,), dtype=tl.float32)
    sum_exp_z = tl.zeros((BLOCK,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK,), dtype=tl.float32)
    first_argmax = tl.zeros((BLOCK,), dtype=tl.float32)
    part = partials_ptr + rows  # chunk 0's row of each field; advanced by N per chunk
    for _ in range(0, num_chunks):
        chunk_max = tl.load(part, mask=row_mask, other=0.0)
        chunk_sum_exp = tl.load(part + field_stride, mask=row_mask, other=1.0)
        new_max = tl.maximum(running_max, chunk_max)
        rescale = tl.exp(running_max - new_max)
        chunk_rescale = tl.exp(chunk_max - new_max)
        if WITH_STATS:
            chunk_sum_exp_z = tl.load(part + 3 * field_stride, mask=row_mask, other=0.0)
            sum_exp_z = (rescale * (sum_exp_z + (running_max - new_max) * sum_exp)
                         + chunk_rescale * (chunk_sum_exp_z + (chunk_max - new_max) * chunk_sum_exp))
            chunk_argmax = tl.load(part + 4 * field_stride, mask=row_mask, other=0.0)
            first_argmax = tl.where(chunk_max > running_max, chunk_argmax, first_argmax)
        sum_exp = sum_exp * rescale + chunk_sum_exp * chunk_rescale
        target_logit += tl.load(part + 2 * field_stride, mask=row_mask, other=0.0)
        running_max = new_max
        part += N
    lse = running_max + tl.log(sum_exp)
    tl.store(logp_ptr + rows, target_logit - lse, mask=row_mask)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    if WITH_STATS:
        tl.store(entropy_ptr + rows, tl.log(sum_exp) - sum_exp_z / sum_exp, mask=row_mask)
        targets = tl.load(targets_ptr + rows, mask=row_mask, other=-1).to(tl.float32)
        tl.store(argmax_ptr + rows, (first_argmax == targets).to(tl.int8), mask=row_mask)


@triton.jit(do_not_specialize=["N", "slice_width", "V"])
def _dlogits_kernel(hidden_ptr, weight_ptr, bias_ptr, targets_ptr, lse_ptr, grad_ptr, dz_ptr,
                    N, H, v0, slice_width, stride_hidden, stride_weight, stride_dz, N_BUCKET, V,
                    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_v = tl.program_id(0).to(tl.int64)  # fastest-varying: a wave walks the vocab of one token block
    pid_n = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    local_cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    row_mask = rows < N
    col_mask = local_cols < slice_width
    rows = tl.where(row_mask, rows, 0)
    cols = v0 + tl.where(col_mask, local_cols, 0)
    hidden_ptrs = hidden_ptr + rows[:, None] * stride_hidden + tl.arange(0, BLOCK_H)[None, :]
    z = _logit_tile(hidden_ptrs, weight_ptr, bias_ptr, cols, H, stride_weight,
                    HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
    targets = tl.load(targets_ptr + rows).to(tl.int64)
    lse = tl.load(lse_ptr + rows)
    grad = tl.load(grad_ptr + rows)
    onehot = (cols[None, :] == targets[:, None]).to(tl.float32)
    dz = grad[:, None] * (onehot - tl.exp(z - lse[:, None]))
    tl.store(dz_ptr + rows[:, None] * stride_dz + local_cols[None, :],
             dz.to(dz_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


KERNELS = {"forward": _partial_forward_kernel, "dlogits": _dlogits_kernel}


@functools.cache
def tuned_kernel(name, configs):
    """``KERNELS[name]`` autotuned over ``CONFIGS[configs][name]`` (one configuration: no tuning)."""
    return triton.autotune(configs=CONFIGS[configs][name], key=TUNING_KEYS[name])(KERNELS[name])


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
    chunk_width = forward_chunk_width()
    num_chunks = triton.cdiv(vocab_size, chunk_width)
    if with_stats and vocab_size > MAX_EXACT_COLUMN:
        raise ValueError(f"return_stats on the triton backend supports a vocabulary of at most {MAX_EXACT_COLUMN} "
                         f"(the argmax column is carried in fp32); got {vocab_size}: use the chunked backend")
    partials = torch.empty(5 if with_stats else 3, num_chunks, num_tokens, dtype=torch.float32, device=hidden.device)
    kernel = tuned_kernel("forward", config_set(hidden.dtype))
    kernel[lambda meta: (triton.cdiv(num_tokens, meta["BLOCK_N"]) * num_chunks,)](
        hidden, weight, bias, targets, partials,
        num_tokens, vocab_size, hidden_size, hidden.stride(0), weight.stride(0), chunk_width, num_chunks,
        n_bucket(num_tokens), WITH_STATS=with_stats, **_kernel_flags(hidden, bias),
    )
    logp = torch.empty(num_tokens, dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(logp)
    entropy = torch.empty_like(logp) if with_stats else lse  # placeholder pointer when unused
    argmax = torch.empty(num_tokens, dtype=torch.int8, device=hidden.device) if with_stats else lse
    _merge_kernel[(triton.cdiv(num_tokens, MERGE_BLOCK),)](
        partials, targets, logp, lse, entropy, argmax, num_tokens, num_chunks,
        WITH_STATS=with_stats, BLOCK=MERGE_BLOCK, num_warps=4,
    )
    if not with_stats:
        return logp, lse, None, None
    return logp, lse, entropy, argmax.bool()


def triton_dlogits(hidden, weight, bias, targets, lse, grad, v0, v1):
    """The [len(hidden), v1 - v0] tile of dz, computed by ``_dlogits_kernel`` in the input dtype.

    Its rows are DZ_ROW_ALIGN-element aligned (a view of a padded buffer), so a ragged last slice
    launches the same binary as the full ones. Under TRITON_INTERPRET=1 the kernel writes fp32 and
    torch rounds to the input dtype: the interpreter's fp32 -> bf16 cast truncates (measured), where
    the GPU's and torch's round to nearest even."""
    num_tokens, hidden_size = hidden.shape
    row_stride = triton.cdiv(v1 - v0, DZ_ROW_ALIGN) * DZ_ROW_ALIGN
    tile_dtype = torch.float32 if interpreting() else hidden.dtype
    dz = torch.empty(num_tokens, row_stride, dtype=tile_dtype, device=hidden.device)[:, :v1 - v0]
    kernel = tuned_kernel("dlogits", config_set(hidden.dtype))
    kernel[lambda meta: (triton.cdiv(v1 - v0, meta["BLOCK_V"]), triton.cdiv(num_tokens, meta["BLOCK_N"]))](
        hidden, weight, bias, targets, lse, grad, dz,
        num_tokens, hidden_size, v0, v1 - v0, hidden.stride(0), weight.stride(0), row_stride,
        n_bucket(num_tokens), weight.shape[0], **_kernel_flags(hidden, bias),
    )
    return dz.to(hidden.dtype)


def backward_chunk_sizes(num_tokens, vocab_size):
    """(token_chunk, vocab_chunk) of the backward: BACKWARD_SLICE columns, tokens to fill DZ_TILE_ELEMENTS."""
    vocab_chunk = min(vocab_size, BACKWARD_SLICE)
    return min(num_tokens, max(1, DZ_TILE_ELEMENTS // vocab_chunk)), vocab_chunk
