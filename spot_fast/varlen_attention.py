"""Pair trees on FlashAttention varlen: each segment attends to exactly the keys it sees, no mask at all.

A batch's segments (``batching.varlen_segments``) are the runs of one document's branch in a row: a
trunk (prompt and shared answer prefix, or a whole sequence), a chosen or rejected suffix, or a
padding token. One layer's attention over them:

    q    = query as [tokens, heads, head_dim]; segment s's queries are tokens cu_seq_q[s]:cu_seq_q[s+1]
    k, v = key and value as [tokens, kv_heads, head_dim], gathered by ``key_index``: per segment its
           trunk's tokens (for a suffix) then its own; the gather's backward adds every suffix's dK/dV
           into its trunk's
    out  = varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k), causal aligned bottom-right: query i
           of a segment of n queries and m keys sees keys 0 .. m - n + i (the trunk and its own branch
           up to itself)

so the work is the visible (query, key) entries and no [length, length] tensor exists. On CUDA the
kernel is torch's ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention); its arguments follow the
installed torch (``window_size=(-1, 0)`` for causal where it has it, else ``is_causal=True``;
``enable_gqa`` where it has it, else key/value heads are repeated; ``scale`` where it has it, else the
queries are scaled so that its fixed 1/sqrt(head_dim) gives the model's scaling). It has no CPU kernel: on the CPU
``reference_varlen_attn``, the same contract as per-segment SDPA, stands in, so the indices, the
gather, the model integration and the gradients are tested everywhere.

The attention function is registered with transformers as ``VARLEN_ATTENTION``. The segments reach it
as the model keyword ``varlen_segments`` (transformers hands its keyword arguments to every attention
call); the batch's ``attention_mask`` is then ``NO_MASK``, an empty 4-D tensor that transformers takes
as a prepared mask, so none is built. A plain call without segments (``model(input_ids)``,
``generate``) gets SDPA's mask and SDPA's attention, as an SDPA model would.
"""
import dataclasses
import functools
import inspect

import torch
import torch.nn.functional as F

VARLEN_ATTENTION = "spot_varlen_attention"


@dataclasses.dataclass(frozen=True)
class VarlenSegments:
    """One batch's segments on the model's device (``batching.varlen_segments``)."""
    cu_seq_q: torch.Tensor   # [S + 1] int32
    cu_seq_k: torch.Tensor   # [S + 1] int32
    key_index: torch.Tensor  # [K] int64
    max_q: int
    max_k: int


def no_mask(rows):
    """The ``attention_mask`` of a varlen forward: 4-D, so transformers builds none; never read."""
    return torch.empty(rows, 1, 0, 0, dtype=torch.bool)


def torch_varlen_attn():
    """torch's FlashAttention varlen function, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def reference_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None,
                          window_size=(-1, -1), enable_gqa=False):
    """``varlen_attn``'s contract as per-segment SDPA, on any device (the segment bounds are read on the
    host). ``query`` [T_q, H, D], ``key``/``value`` [T_k, H_kv, D]; segment s's queries
    ``cu_seq_q[s]:cu_seq_q[s+1]`` attend to keys ``cu_seq_k[s]:cu_seq_k[s+1]``, causally aligned
    bottom-right under ``window_size=(-1, 0)`` (query i of n sees keys 0 .. m - n + i of m), to all
    of them under ``(-1, -1)``. ``max_q`` and ``max_k`` bound the segments (checked)."""
    if tuple(window_size) not in ((-1, -1), (-1, 0)):
        raise ValueError(f"reference_varlen_attn: window_size {tuple(window_size)} is not served (full or causal only)")
    causal = tuple(window_size) == (-1, 0)
    q_bounds, k_bounds = cu_seq_q.tolist(), cu_seq_k.tolist()
    outputs = []
    for q0, q1, k0, k1 in zip(q_bounds, q_bounds[1:], k_bounds, k_bounds[1:]):
        queries, keys = q1 - q0, k1 - k0
        if queries > max_q or keys > max_k:
            raise ValueError(f"reference_varlen_attn: a segment of {queries} queries and {keys} keys exceeds "
                             f"max_q {max_q} / max_k {max_k}")
        mask = None
        if causal:
            mask = torch.arange(keys, device=query.device) <= torch.arange(queries, device=query.device)[:, None] + keys - queries
        out = F.scaled_dot_product_attention(query[q0:q1].transpose(0, 1), key[k0:k1].transpose(0, 1),
                                             value[k0:k1].transpose(0, 1), attn_mask=mask, scale=scale,
                                             enable_gqa=enable_gqa)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


@functools.cache
def _accepts(function, name):
    return name in inspect.signature(function).parameters


def causal_varlen_attention(query, key, value, segments, scale=None, kernel=None):
    """Causal attention of ``query`` [T, H, D] over ``key``/``value`` [T, H_kv, D] gathered by
    ``segments`` (a ``VarlenSegments``): ``kernel`` (default: torch's ``varlen_attn`` on CUDA, the
    reference elsewhere), called as the installed torch's signature allows."""
    if kernel is None:
        kernel = torch_varlen_attn() if query.is_cuda else reference_varlen_attn
    key, value = key.index_select(0, segments.key_index), value.index_select(0, segments.key_index)
    options = {}
    if _accepts(kernel, "scale"):
        options["scale"] = scale
    elif scale is not None:  # a torch whose varlen_attn has no scale: its own is 1/sqrt(head_dim)
        query = query * (scale * query.shape[-1] ** 0.5)
    options.update({"window_size": (-1, 0)} if _accepts(kernel, "window_size") else {"is_causal": True})
    if query.shape[1] != key.shape[1]:
        if _accepts(kernel, "enable_gqa"):
            options["enable_gqa"] = True
        else:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return kernel(query, key, value, segments.cu_seq_q, segments.cu_seq_k, segments.max_q, segments.max_k, **options)


UNSUPPORTED = ("softcap", "s_aux", "sliding_window", "position_bias")


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             varlen_segments=None, **kwargs):
    """transformers' attention-function interface for ``VARLEN_ATTENTION``: ``query`` [B, H, L, D],
    ``key``/``value`` [B, H_kv, L, D]; returns ``(output [B, L, H, D], None)``. Without
    ``varlen_segments`` (a plain call) it is transformers' SDPA attention. Only plain causal attention
    (no dropout, soft-capping, attention sinks or sliding window) is served."""
    unsupported = {name: kwargs.get(name) for name in UNSUPPORTED if kwargs.get(name) is not None}
    if dropout or unsupported:
        raise ValueError(f"{VARLEN_ATTENTION}: dropout {dropout}, {unsupported}: only plain causal attention is served")
    if varlen_segments is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    rows, heads, length, head_dim = query.shape
    flat = lambda t: t.transpose(1, 2).reshape(rows * length, t.shape[1], head_dim)  # noqa: E731
    output = causal_varlen_attention(flat(query), flat(key), flat(value), varlen_segments, scale=scaling)
    return output.view(rows, length, heads, head_dim), None


@functools.cache
def register_varlen_attention():
    """Makes ``VARLEN_ATTENTION`` an attention implementation transformers accepts (once per process),
    with SDPA's masks for plain calls."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)


def refused_by_model(config):
    """Why a model with ``config`` cannot run varlen attention, or None: attention dropout, a sliding
    window, or logit soft-capping (varlen serves plain causal attention only)."""
    reasons = [f"{name} {getattr(config, name)}" for name in ("attention_dropout", "sliding_window",
                                                              "attn_logit_softcapping")
               if getattr(config, name, None) and (name != "sliding_window" or getattr(config, "use_sliding_window", True))]
    return ", ".join(reasons) or None


def self_check(device, dtype=torch.bfloat16, kernel=None):
    """Whether ``kernel`` (default: torch's ``varlen_attn`` on CUDA) on ``device`` equals dense-mask
    SDPA on a small batch of pair trees (GQA, a one-token suffix, an empty shared prefix, packed),
    forward and backward, within a few roundings of ``dtype`` relative to each tensor's largest value:
    ``(passed, what was compared)``. A kernel that aligns the causal mask top-left, or gathers the
    wrong keys, is off by O(1). Well under a second on a GPU."""
    from .attention import dense_mask
    from .batching import collate
    from .data import Pair

    generator = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, 100, (n,), generator=generator).tolist()  # noqa: E731
    common = ids(40)
    pairs = [Pair(ids(30), common + ids(20), common + ids(9), line=1), Pair(ids(17), ids(1), ids(33), line=2),
             Pair(ids(5), common[:7] + [1], common[:7] + [2], line=3)]
    batch = collate(pairs, pack=True, pad_id=0, share_prefix=True)
    tokens, heads, kv_heads, head_dim = batch.input_ids.numel(), 8, 2, 64
    q, k, v = (torch.randn(tokens, h, head_dim, generator=generator).to(device, dtype).requires_grad_()
               for h in (heads, kv_heads, kv_heads))
    segments = VarlenSegments(batch.cu_seq_q.to(device), batch.cu_seq_k.to(device), batch.key_index.to(device),
                              batch.max_segment_queries, batch.max_segment_keys)
    upstream = torch.randn(tokens, heads, head_dim, generator=generator).to(device, dtype)
    results = []
    for attend in (lambda: causal_varlen_attention(q, k, v, segments, kernel=kernel),
                   lambda: F.scaled_dot_product_attention(
                       q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                       attn_mask=dense_mask(batch).to(device), enable_gqa=True)[0].transpose(0, 1)):
        out = attend()
        grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))
        results.append((out.detach(), *grads))
    worst = max(float(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6)))
                for a, b in zip(*results))
    tolerance = 4 * torch.finfo(dtype).eps
    return worst <= tolerance, f"varlen vs dense-mask SDPA on {device}: worst relative error {worst:.2e} (limit {tolerance:.1e})"
