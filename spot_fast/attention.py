"""The attention mask of a batch, in the form the model's attention implementation takes.

A batch gives every token a document id (-1 for padding) and a branch (``batching.py``); key k is
visible to query q when ``doc[k] == doc[q] >= 0``, k is not after q in the row, and
``branch[k] in (TRUNK, branch[q])``. Padding tokens attend to themselves only (a query that sees no
key would make the attention output NaN).

- ``sdpa`` / ``eager``: sequence layouts need no mask of ours (packed rows: transformers derives the
  block-diagonal causal mask from the restarting positions; padded rows: a [rows, length] padding
  mask); pair trees get a dense boolean [rows, 1, length, length] mask (additive float for eager).
- ``flex_attention``: a FlexAttention ``BlockMask`` built from the same rule for every layout, so fully
  masked blocks are skipped and no [length, length] tensor exists.
"""
import torch

from .batching import TRUNK


def visible(doc_ids, branch_ids, query, key):
    """The attention rule for index tensors ``query`` and ``key`` of one row (broadcasting)."""
    same_document = (doc_ids[query] == doc_ids[key]) & (doc_ids[query] >= 0)
    on_path = (branch_ids[key] == TRUNK) | (branch_ids[key] == branch_ids[query])
    return (same_document & (key <= query) & on_path) | (query == key)


def dense_mask(batch):
    """[rows, 1, length, length] bool: True where a query may attend to a key."""
    length = batch.doc_ids.shape[1]
    index = torch.arange(length, device=batch.doc_ids.device)
    query, key = index[:, None], index[None, :]
    masks = [visible(doc, branch, query, key) for doc, branch in zip(batch.doc_ids, batch.branch_ids)]
    return torch.stack(masks)[:, None]


def block_mask(batch):
    from torch.nn.attention.flex_attention import create_block_mask

    doc_ids, branch_ids = batch.doc_ids, batch.branch_ids

    def mask_mod(b, h, q_idx, kv_idx):
        return visible(doc_ids[b], branch_ids[b], q_idx, kv_idx)

    rows, length = doc_ids.shape
    return create_block_mask(mask_mod, B=rows, H=None, Q_LEN=length, KV_LEN=length, device=doc_ids.device)


def attention_mask(batch, implementation):
    """What to pass as ``attention_mask`` to a model whose ``config._attn_implementation`` is ``implementation``."""
    if implementation == "flex_attention":
        return block_mask(batch)
    if batch.shares_prefix:
        mask = dense_mask(batch)
        if implementation == "eager":
            return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)
        return mask
    return None if batch.packed else (batch.doc_ids >= 0).long()
