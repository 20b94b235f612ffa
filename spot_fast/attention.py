"""How a batch is attended: the three attention backends, each one ``AttentionBackend`` record, and
the masks they take.

``ATTENTION_BACKENDS`` holds a record per ``--attention`` choice: ``sdpa`` (a dense boolean mask, any
device), ``flex`` (FlexAttention block masks, CUDA) and ``varlen`` (FlashAttention varlen over the
batch's segments, no mask: ``varlen_attention.py``; on the CPU its per-segment SDPA reference). A
record says where it can run, how transformers is given it, which models it refuses and what the
model body receives for a batch; config, preflight, the model loader, the trainer and the benchmarks
all read it. ``choose_attention`` resolves ``auto``: varlen on CUDA once its self-check on the device
passes, else SDPA.

A batch gives every token a document id (-1 for padding) and a branch (``batching.py``); key k is
visible to query q when ``doc[k] == doc[q] >= 0``, k is not after q in the row, and
``branch[k] in (TRUNK, branch[q])``. Padding tokens attend to themselves only (a query that sees no
key would make the attention output NaN). ``collate`` numbers a row's documents in increasing order
along the row (padding may sit anywhere); the block-level masks below rely on that order.

- ``sdpa`` / ``eager``: padded sequence rows get a [rows, length] padding mask (transformers adds
  causality); packed rows and pair trees get a dense boolean [rows, 1, length, length] mask (additive
  float for eager), written in place in chunks of query rows: the mask itself is the only
  [length, length] tensor.
- ``FLEX_ATTENTION``: a FlexAttention ``BlockMask`` over rows padded to a multiple of
  ``FLEX_BLOCK_SIZE``, whose block lists are computed from per-block summaries of the document and
  branch ids (``attended_blocks``) in O(length + blocks^2) memory and time. torch's
  ``create_block_mask`` would evaluate the rule on all length^2 pairs (densely with ``_compile=False``:
  13.7 s and ~1.9 GB for one L=13k batch; fused with ``_compile=True``, but compiled per shape).
  Masked blocks are skipped, fully visible blocks skip the rule, and only the partial ones evaluate it.

``FLEX_ATTENTION`` is registered with transformers as an attention implementation of its own: it calls
one ``torch.compile(flex_attention, dynamic=True)`` for the whole process, so training and scoring
(evaluation mode, no gradients) each compile once (dynamo guards on the grad mode) and reuse their
graph when the mode flips back. transformers' ``flex_attention`` compiles a new function whenever
``module.training`` changes (``WrappedFlexAttention``), so every flip recompiles, until dynamo's
recompile limit sends it to the eager path. Rows padded to whole blocks keep the length's guards
(divisibility by the block size) the same for every length, and the block lists' sizes are marked
dynamic, so a new length compiles nothing (measured with dynamo's compile counter on the CPU; a row of
a single block, like a single row, is specialized once more: dynamic shapes treat size 1 apart).
"""
import dataclasses
import functools
import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

from .batching import BRANCHES, TRUNK
from .varlen_attention import (VARLEN_ATTENTION, VarlenSegments, no_mask, refused_by_model, register_varlen_attention,
                               self_check, torch_varlen_attn)

FLEX_ATTENTION = "spot_flex_attention"
FLEX_BLOCK_SIZE = 128  # FlexAttention's default sparse block size
FLEX_COMPILE_BACKEND = "inductor"
DENSE_MASK_CHUNK_ELEMENTS = 2 ** 24  # bound on the temporaries of one chunk of the dense mask
NO_TOKEN = -2  # document id of the positions past a row's end when it is cut into blocks


def sees_branch(query_branch, key_branch):
    """Whether a query on ``query_branch`` may see a key on ``key_branch`` of the same document."""
    return (key_branch == TRUNK) | (key_branch == query_branch)


def visible(doc_ids, branch_ids, query, key):
    """The attention rule for index tensors ``query`` and ``key`` of one row (broadcasting)."""
    same_document = (doc_ids[query] == doc_ids[key]) & (doc_ids[query] >= 0)
    return (same_document & (key <= query) & sees_branch(branch_ids[query], branch_ids[key])) | (query == key)


def dense_mask(batch):
    """[rows, 1, length, length] bool: True where a query may attend to a key. Written row by row, chunk
    by chunk of queries, into the one output tensor, so temporaries stay under ``DENSE_MASK_CHUNK_ELEMENTS``."""
    rows, length = batch.doc_ids.shape
    mask = torch.empty((rows, 1, length, length), dtype=torch.bool, device=batch.doc_ids.device)
    key = torch.arange(length, device=batch.doc_ids.device)
    chunk = max(1, DENSE_MASK_CHUNK_ELEMENTS // length)
    for row, (doc_ids, branch_ids) in enumerate(zip(batch.doc_ids, batch.branch_ids)):
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            mask[row, 0, start:stop, :stop] = visible(doc_ids, branch_ids, key[start:stop, None], key[None, :stop])
            mask[row, 0, start:stop, stop:] = False  # keys after the chunk's queries
    return mask


def attended_blocks(doc_ids, branch_ids, block_size):
    """``(partial, full)``, [rows, n, n] bools over (query block, key block) pairs of each row cut into
    ``n = ceil(length / block_size)`` blocks: ``full`` where every query of the block sees every key
    of the other, ``partial`` where some but not all (query, key) pairs are visible; neither where none is.

    Keys after a query block are never visible; the diagonal block always holds a visible pair (a
    token sees itself) and is full only when it holds a single token. For a key block j before query
    block i, every key precedes every query, so visibility is the document and branch rule alone.
    Documents increase along a row, so the only document the two blocks can share is the last one of
    block j if it is the first one of block i; some pair is visible iff a branch of that document in
    block i sees (``sees_branch``) a branch of it in block j, and all pairs are iff both blocks hold
    that one document only (no padding) and no branch pair between them is unseen. Per-block
    summaries (first and last document, branches present) cost O(length), the pairs O(n^2 branches^2).
    """
    rows, length = doc_ids.shape
    n = -(-length // block_size)
    beyond = n * block_size - length
    doc = F.pad(doc_ids, (0, beyond), value=NO_TOKEN).view(rows, n, block_size)
    branch = F.pad(branch_ids, (0, beyond), value=TRUNK).view(rows, n, block_size)
    real = doc >= 0
    first_doc = torch.where(real, doc, torch.iinfo(doc.dtype).max).amin(-1)
    last_doc = torch.where(real, doc, -1).amax(-1)
    one_doc = (real | (doc == NO_TOKEN)).all(-1) & (first_doc == last_doc)  # no padding, one document
    single_token = (doc != NO_TOKEN).sum(-1) == 1

    every_branch = torch.arange(len(BRANCHES), device=doc.device)
    branches = branch[..., None] == every_branch  # [rows, n, block_size, branches]
    as_query = (branches & (real & (doc == first_doc[..., None]))[..., None]).any(-2).float()
    as_key = (branches & (real & (doc == last_doc[..., None]))[..., None]).any(-2).float()
    sees = sees_branch(every_branch[:, None], every_branch[None, :]).float()  # [query branch, key branch]
    seen_pairs = as_query @ sees @ as_key.transpose(1, 2)        # [rows, query block, key block]
    unseen_pairs = as_query @ (1 - sees) @ as_key.transpose(1, 2)

    shared_document = (first_doc[:, :, None] == last_doc[:, None, :]) & (last_doc[:, None, :] >= 0)
    below = torch.ones(n, n, dtype=torch.bool, device=doc.device).tril_(-1)
    diagonal = torch.eye(n, dtype=torch.bool, device=doc.device)
    linked = below & shared_document & (seen_pairs > 0)
    full = (linked & one_doc[:, :, None] & one_doc[:, None, :] & (unseen_pairs == 0)) | (diagonal & single_token[:, :, None])
    partial = (linked | diagonal) & ~full
    return partial, full


def attended_block_pairs(batch, block_size):
    """``(partial, full)``: how many (query block, key block) pairs of ``batch``'s rows, cut into
    blocks of ``block_size`` tokens, hold some visible (query, key) pair but not only visible ones,
    and how many hold only visible ones (the work of an attention kernel that skips masked blocks)."""
    partial, full = attended_blocks(batch.doc_ids, batch.branch_ids, block_size)
    return int(partial.sum()), int(full.sum())


def _ordered(blocks):
    """FlexAttention's block lists of a [rows, n, n] bool: per query block, the number of key blocks
    and their indices (ascending, the rest after them), with a head dimension of 1."""
    counts = blocks.sum(-1, dtype=torch.int32)
    indices = torch.argsort(blocks.to(torch.int32), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[:, None].contiguous(), indices[:, None].contiguous()


def block_mask(doc_ids, branch_ids):
    """The FlexAttention ``BlockMask`` of rows whose length is a multiple of ``FLEX_BLOCK_SIZE``."""
    from torch.nn.attention.flex_attention import BlockMask

    if doc_ids.shape[1] % FLEX_BLOCK_SIZE:
        raise ValueError(f"block_mask: rows of {doc_ids.shape[1]} tokens, not a multiple of {FLEX_BLOCK_SIZE}")
    partial, full = attended_blocks(doc_ids, branch_ids, FLEX_BLOCK_SIZE)

    def mask_mod(b, h, q_idx, kv_idx):
        return visible(doc_ids[b], branch_ids[b], q_idx, kv_idx)

    mask = BlockMask.from_kv_blocks(*_ordered(partial), *_ordered(full), BLOCK_SIZE=FLEX_BLOCK_SIZE, mask_mod=mask_mod)
    # dynamo treats the block lists' sizes as static even under dynamic=True: mark rows and blocks dynamic, so a
    # new length does not recompile the attention
    for counts, indices in ((mask.kv_num_blocks, mask.kv_indices), (mask.full_kv_num_blocks, mask.full_kv_indices),
                            (mask.q_num_blocks, mask.q_indices), (mask.full_q_num_blocks, mask.full_q_indices)):
        for tensor, dims in ((counts, (0, 2)), (indices, (0, 2, 3))):
            for dim in dims:
                torch._dynamo.maybe_mark_dynamic(tensor, dim)
    return mask


def attention_mask(batch, implementation):
    """What to pass as ``attention_mask`` to a model whose ``config._attn_implementation`` is
    ``implementation`` (for ``FLEX_ATTENTION``, ``model_inputs`` pads the rows first)."""
    if implementation == "flex_attention":
        raise ValueError(f"attention implementation 'flex_attention' recompiles whenever training mode changes: "
                         f"load the model with attn_implementation={FLEX_ATTENTION!r}")
    if implementation == FLEX_ATTENTION:
        return block_mask(batch.doc_ids, batch.branch_ids)
    if batch.packed or batch.shares_prefix:
        mask = dense_mask(batch)
        if implementation == "eager":
            return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
                mask.logical_not_(), torch.finfo(torch.float32).min)
        return mask
    return (batch.doc_ids >= 0).long()


def flex_model_inputs(batch):
    """The rows padded to a multiple of ``FLEX_BLOCK_SIZE`` (padding tokens: id 0, document -1) and
    their ``BlockMask``; the hidden states past ``batch.input_ids.shape[1]`` belong to that padding."""
    beyond = -batch.input_ids.shape[1] % FLEX_BLOCK_SIZE
    doc_ids, branch_ids = F.pad(batch.doc_ids, (0, beyond), value=-1), F.pad(batch.branch_ids, (0, beyond), value=TRUNK)
    return {"input_ids": F.pad(batch.input_ids, (0, beyond)), "position_ids": F.pad(batch.position_ids, (0, beyond)),
            "attention_mask": block_mask(doc_ids, branch_ids)}


def varlen_model_inputs(batch):
    """The rows as they are, no mask (``no_mask``), and the batch's segments as ``varlen_segments``."""
    segments = VarlenSegments(batch.cu_seq_q, batch.cu_seq_k, batch.key_index, batch.max_segment_queries,
                              batch.max_segment_keys)
    return {"input_ids": batch.input_ids, "position_ids": batch.position_ids,
            "attention_mask": no_mask(batch.input_ids.shape[0]).to(batch.input_ids.device), "varlen_segments": segments}


def sdpa_model_inputs(batch, implementation="sdpa"):
    return {"input_ids": batch.input_ids, "position_ids": batch.position_ids,
            "attention_mask": attention_mask(batch, implementation)}


def model_inputs(batch, implementation):
    """Keyword arguments of the model body for ``batch`` under the attention ``implementation``
    (``model.config._attn_implementation``): ``input_ids``, ``position_ids``, ``attention_mask`` and
    what else the implementation's backend adds (``AttentionBackend.model_inputs``)."""
    backend = backend_of(implementation)
    if backend is None:  # transformers' eager attention, and the like
        return sdpa_model_inputs(batch, implementation)
    return backend.model_inputs(batch)


@functools.cache
def compiled_flex_attention(backend):
    """torch's ``flex_attention`` compiled once per process and ``backend``, with dynamic shapes."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, backend=backend, dynamic=True)


def flex_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function interface for ``FLEX_ATTENTION``: ``attention_mask`` is a
    ``BlockMask``; returns ``(output [batch, length, heads, head_dim], None)``. Only plain causal
    attention (no dropout, soft-capping, attention sinks or sliding window) is supported."""
    unsupported = {name: kwargs.get(name) for name in ("softcap", "s_aux", "sliding_window", "position_bias")}
    if dropout or any(v is not None for v in unsupported.values()):
        raise ValueError(f"{FLEX_ATTENTION}: dropout {dropout}, {unsupported}: only plain attention is supported")
    output = compiled_flex_attention(FLEX_COMPILE_BACKEND)(
        query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return output.transpose(1, 2).contiguous(), None


@functools.cache
def register_flex_attention():
    """Makes ``FLEX_ATTENTION`` an attention implementation transformers accepts (once per process;
    called where a model is given it: transformers is imported here, not when this module is)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flex_attention_mask
    AttentionInterface.register(FLEX_ATTENTION, flex_attention_forward)
    AttentionMaskInterface.register(FLEX_ATTENTION, flex_attention_mask)  # masks of plain calls (model(input_ids))


def flex_unavailable(cuda):
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return f"--attention flex needs torch's FlexAttention (torch >= 2.5); this torch is {torch.__version__}"
    if not cuda:
        return f"--attention flex needs CUDA: FlexAttention has no CPU backward in torch {torch.__version__}"
    return None


def backend_of(implementation):
    """The ``AttentionBackend`` whose transformers implementation is ``implementation``, or None."""
    return next((b for b in ATTENTION_BACKENDS.values() if b.implementation == implementation), None)


def varlen_unavailable(cuda):
    if cuda and torch_varlen_attn() is None:
        return (f"--attention varlen needs torch.nn.attention.varlen.varlen_attn (torch >= 2.9) on CUDA; this torch "
                f"is {torch.__version__}")
    return None  # on the CPU the per-segment SDPA reference stands in


def flex_refused_by_model(model):
    return None if model._supports_flex_attn else f"{type(model).__name__} does not support FlexAttention"


def varlen_refused_by_model(model):
    reasons = refused_by_model(model.config)
    return None if reasons is None else f"varlen attention serves plain causal attention only; the model has {reasons}"


@dataclasses.dataclass(frozen=True)
class AttentionBackend:
    """One way to attend over a batch (``--attention NAME``): the attention implementation transformers
    runs; ``unavailable(cuda)``, None where this machine can run it, else the one line why not (checked
    with the options); ``register()``, which makes the implementation known to transformers (once per
    process, where a model is given it); ``refused_by_model(model)``, None or why this model cannot use
    it; and ``model_inputs(batch)``, the model body's keyword arguments for a batch."""
    name: str
    implementation: str
    unavailable: Callable
    register: Callable
    refused_by_model: Callable
    model_inputs: Callable


ATTENTION_BACKENDS = {
    "sdpa": AttentionBackend("sdpa", "sdpa", lambda cuda: None, lambda: None, lambda model: None, sdpa_model_inputs),
    "flex": AttentionBackend("flex", FLEX_ATTENTION, flex_unavailable, register_flex_attention, flex_refused_by_model,
                             flex_model_inputs),
    "varlen": AttentionBackend("varlen", VARLEN_ATTENTION, varlen_unavailable, register_varlen_attention,
                               varlen_refused_by_model, varlen_model_inputs),
}


def choose_attention(choice, device):
    """``(backend name, why)`` for ``--attention choice`` on ``device``. ``auto`` is ``varlen`` on CUDA
    where this torch has ``varlen_attn`` and its self-check on ``device`` passes
    (``varlen_attention.self_check``), else ``sdpa``; any other choice is itself."""
    if choice != "auto":
        return choice, "chosen with --attention"
    if device.type != "cuda":
        return "sdpa", "auto on a CPU: sdpa (varlen and flex need CUDA kernels)"
    if torch_varlen_attn() is None:
        return "sdpa", f"auto: sdpa, because this torch ({torch.__version__}) has no varlen_attn"
    passed, detail = self_check(device)
    if not passed:
        return "sdpa", f"auto: sdpa, because varlen failed its self-check ({detail})"
    return "varlen", f"auto: varlen, its self-check passed ({detail})"
