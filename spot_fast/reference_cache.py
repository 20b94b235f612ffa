"""Reference log-probs, computed once before training and cached on disk.

The reference model is the starting policy, so its sequence log-probs come from the policy itself
before the first update; no second model is ever held. The cache file is named by a hash of
everything that changes the values (model identity, data file hash, tokenizer, chat template,
max length, dtype) and written atomically (temp file + rename).
"""
import hashlib
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import collate
from .policy import batch_logps


class ReferenceCache:
    def __init__(self, cache_dir, key_fields):
        self.key_fields = dict(key_fields)
        digest = hashlib.sha256(json.dumps(self.key_fields, sort_keys=True).encode()).hexdigest()[:24]
        self.path = Path(cache_dir) / f"reference-{digest}.pt"

    def load(self):
        """[num_pairs, 2] (chosen, rejected) fp32 log-probs, or None when not cached yet."""
        if not self.path.exists():
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        return saved["logps"]

    def save(self, logps):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"logps": logps.cpu(), "key": json.dumps(self.key_fields, sort_keys=True)}, tmp)
        os.replace(tmp, self.path)


@torch.no_grad()
def compute_sequence_logps(model, pairs, batch_size, pack, pad_id, device, desc="reference log-probs"):
    """[len(pairs), 2] (chosen, rejected) summed log-probs of ``pairs`` under ``model``, in order."""
    was_training = model.training
    model.eval()
    out = []
    for start in tqdm(range(0, len(pairs), batch_size), desc=desc, unit="batch", leave=False):
        batch = collate(pairs[start:start + batch_size], pack, pad_id).to(device)
        logps = batch_logps(model, batch)
        out.append(torch.stack([logps.chosen, logps.rejected], dim=1).float().cpu())
    model.train(was_training)
    return torch.cat(out)
