"""Log-probs computed once before training, without gradients, and cached on disk.

Three things are computed this way, all by one scoring loop (``score``) through the fused head:
- the reference sequence log-probs of the preference objectives (``compute_sequence_logps``); the
  reference model is the starting policy, so no second model is ever held;
- PEAR's behaviour log-probs per chosen token, from a behaviour model or the starting policy;
- the retain set's reference log-probs per token, for the forgetting signals
  (both ``compute_token_logps``).
A cache file is named by what it holds and a hash of everything that changes the values (model
identity, data file hash, tokenizer, chat template, max length, dtype) and written atomically
(temp file + rename), so a crash never leaves a half-written cache that a later run would trust.
With several processes each scores a contiguous share of the data and rank 0 writes the whole
(``load_or_compute``); every rank then reads the file, so the cache directory must be shared.
"""
import hashlib
import json
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .data import collate
from .engine import barrier
from .policy import batch_logps


class LogprobCache:
    """A dict of CPU tensors in ``cache_dir/<what>-<hash of key_fields>.pt``."""

    def __init__(self, cache_dir, what, key_fields):
        self.key_fields = dict(key_fields)
        digest = hashlib.sha256(json.dumps(self.key_fields, sort_keys=True).encode()).hexdigest()[:24]
        self.path = Path(cache_dir) / f"{what}-{digest}.pt"

    def exists(self):
        return self.path.exists()

    def load(self):
        return torch.load(self.path, map_location="cpu", weights_only=True)["tensors"]

    def save(self, tensors):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"tensors": {k: v.cpu() for k, v in tensors.items()},
                    "key": json.dumps(self.key_fields, sort_keys=True)}, tmp)
        os.replace(tmp, self.path)


def load_or_compute(cache, pairs, compute, label):
    """The tensors in ``cache``, computed first if it does not exist yet (all ranks must call this).

    Computing: rank r scores the r-th contiguous share of ``pairs`` with ``compute(share, desc)``
    (a dict of tensors whose first dimension runs over the share's pairs or tokens, in order; ``desc``
    is None on ranks that show no progress bar); rank 0 joins the shares in rank order, which is the
    order of ``pairs``, and writes the cache.
    """
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    exists = [cache.exists()]
    if distributed:
        dist.broadcast_object_list(exists, src=0)  # rank 0 decides, so every rank takes the same branch
    if exists[0]:
        if rank == 0:
            print(f"{label} reused from {cache.path}")
    else:
        per_rank = math.ceil(len(pairs) / world)
        share = pairs[rank * per_rank:(rank + 1) * per_rank]
        part = compute(share, label if rank == 0 else None) if share else None
        parts = [part]
        if distributed:
            parts = [None] * world if rank == 0 else None
            dist.gather_object(part, parts, dst=0)
        if rank == 0:
            parts = [p for p in parts if p is not None]
            cache.save({key: torch.cat([p[key] for p in parts]) for key in parts[0]})
            print(f"{label} computed on {world} process(es) and cached at {cache.path}")
    barrier()
    return cache.load()


@torch.no_grad()
def score(model, pairs, batch_size, pack, pad_id, device, desc):
    """Yields ``(start, BatchLogps)`` for consecutive batches of ``pairs`` under ``model`` in eval mode
    (with a progress bar named ``desc``, none when it is None)."""
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(pairs), batch_size), desc=desc, unit="batch", leave=False, disable=desc is None):
            yield start, batch_logps(model, collate(pairs[start:start + batch_size], pack, pad_id).to(device))
    finally:
        model.train(was_training)


def compute_sequence_logps(model, pairs, batch_size, pack, pad_id, device, desc="reference log-probs"):
    """[len(pairs), 2] (chosen, rejected) summed log-probs, or [len(pairs), 1] for pairs without rejected."""
    out = []
    for _, logps in score(model, pairs, batch_size, pack, pad_id, device, desc):
        sides = [logps.chosen] if logps.rejected is None else [logps.chosen, logps.rejected]
        out.append(torch.stack(sides, dim=1).float().cpu())
    return torch.cat(out)


def compute_token_logps(model, pairs, batch_size, pack, pad_id, device, desc):
    """Log-probs of every chosen completion token of ``pairs``, concatenated in pair order (fp32, CPU)."""
    out = []
    for start, logps in score(model, pairs, batch_size, pack, pad_id, device, desc):
        chosen_tokens = sum(len(p.chosen_ids) for p in pairs[start:start + batch_size])
        out.append(logps.token_logps[:chosen_tokens].float().cpu())  # chosen sequences come first
    return torch.cat(out)
