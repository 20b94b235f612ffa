"""Log-probs computed once (without gradients) and cached on disk, keyed by what determines them.

Four things are scored once this way, all by ``scoring.Scorer``: the reference sequence log-probs of
the preference objectives (the reference model is the starting policy, so no second model is held),
PEAR's behaviour log-probs per chosen token, the retain set's reference log-probs per token, and the
reference log-probs of the evaluation pairs.

A cache file ``<what>-<hash>.pt`` is keyed by everything its values depend on and nothing else:
a hash of the **token ids** scored (so any change of data, chat template, tokenizer or truncation
gives a new key, and stale log-probs can never be reused), the model's identity, the dtype and the
kernel backend. The file stores its key, its values and a sha256 of the values' bytes; a file whose
key or row count differs from what the run expects, whose values do not match their checksum (damaged
or edited), or that cannot be read, is refused with an error naming it. Writes are
atomic (temp file + fsync + rename). Only rank 0 touches the file: it decides whether the cache
exists, reads it and sends the values to the other ranks, or, after all ranks have scored, writes it.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .crash_safe import replaced_file
from .scoring import Scorer, rank_and_world


class CacheError(RuntimeError):
    """A cache file that cannot be used; the message names the file and what to do."""


def token_digest(pairs, with_rejected):
    """sha256 of the token ids that scoring ``pairs`` reads: prompt and chosen (and rejected) of each."""
    digest = hashlib.sha256()
    for pair in pairs:
        sides = (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids if with_rejected else None)
        for ids in sides:
            array = np.asarray(ids if ids is not None else [], dtype=np.int64)
            digest.update(np.int64(array.size).tobytes())  # lengths make the encoding unambiguous
            digest.update(array.tobytes())
    return digest.hexdigest()


def values_digest(values):
    """sha256 of a tensor's dtype, shape and bytes."""
    digest = hashlib.sha256(f"{values.dtype} {tuple(values.shape)}".encode())
    digest.update(values.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class LogprobCache:
    """One cached fp32 tensor at ``cache_dir/<what>-<hash of key>.pt``."""

    def __init__(self, cache_dir, what, key):
        self.key = json.dumps({"what": what, **key}, sort_keys=True)
        self.path = Path(cache_dir) / f"{what}-{hashlib.sha256(self.key.encode()).hexdigest()[:24]}.pt"

    def exists(self):
        return self.path.exists()

    def load(self, rows):
        """The cached tensor, checked against this cache's key and the ``rows`` the run expects."""
        remedy = "delete it to recompute"
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            key, values, checksum = saved["key"], saved["logps"], saved.get("checksum")
        except Exception as error:  # a truncated or foreign file: torch raises many kinds
            raise CacheError(f"log-prob cache {self.path} cannot be read ({type(error).__name__}: {error}); "
                             f"{remedy}") from None
        if key != self.key:
            raise CacheError(f"log-prob cache {self.path} was computed from other inputs than this run's "
                             f"(its key {key} differs from {self.key}); {remedy}")
        if checksum != values_digest(values):
            raise CacheError(f"log-prob cache {self.path}: its values do not match the checksum stored with them "
                             f"(the file is damaged or was edited); {remedy}")
        if values.shape[0] != rows:
            raise CacheError(f"log-prob cache {self.path} holds {values.shape[0]} rows but this run expects "
                             f"{rows}; {remedy}")
        return values

    def save(self, values):
        with replaced_file(self.path, "wb") as f:
            torch.save({"key": self.key, "logps": values.cpu(), "checksum": values_digest(values)}, f)


def cached(cache, rows, compute, label):
    """The cached log-probs, computed first with ``compute()`` (every rank takes part; it must return
    the whole result on every rank, as ``Scorer.score`` does) when rank 0 has no cache file yet.
    Every rank must call this together and gets the values."""
    rank, world = rank_and_world()
    found = [cache.exists()]
    if world > 1:
        dist.broadcast_object_list(found, src=0)  # rank 0 decides, so every rank takes the same branch
    if found[0]:
        values = [cache.load(rows) if rank == 0 else None]
        if world > 1:
            dist.broadcast_object_list(values, src=0)
        if rank == 0:
            print(f"{label} reused from {cache.path}")
        return values[0]
    values = compute()
    if values.shape[0] != rows:
        raise CacheError(f"{label}: scored {values.shape[0]} rows, expected {rows}")
    if rank == 0:
        cache.save(values)
        print(f"{label} computed on {world} process(es) and cached at {cache.path}")
    return values


@dataclass(frozen=True)
class ScoredOnce:
    """Log-probs scored once by ``scorer`` and cached in ``directory`` (see the module docstring)."""
    scorer: Scorer
    directory: str
    dtype: torch.dtype
    kernel_backend: str  # the resolved backend (``triton``, ``chunked`` or ``eager``)

    def get(self, what, source, model, pairs, per_token, load):
        """Log-probs of ``pairs`` (read from the file ``source``) under the model that ``load()`` returns
        (called only when the cache misses), whose ``models.model_identity`` is ``model``:
        ``Scorer.score``'s result."""
        with_rejected = not per_token and pairs[0].rejected_ids is not None
        cache = LogprobCache(self.directory, what, {
            "tokens": token_digest(pairs, with_rejected), "model": model,
            "dtype": str(self.dtype), "kernel_backend": self.kernel_backend})
        rows = sum(len(p.chosen_ids) for p in pairs) if per_token else len(pairs)
        label = f"{what} log-probs of {Path(source).name}"
        return cached(cache, rows, lambda: self.scorer.score(load(), pairs, per_token, desc=label), label)
