"""One way to score examples under a model: reference, behaviour, retain and evaluation log-probs.

``Scorer.score`` runs a model without gradients over pairs in batches of ``batch_size`` (packed or
padded, exactly as training batches them) and returns, in pair order, either the summed log-probs of
each scored sequence (``[P, 2]`` chosen and rejected, ``[P, 1]`` for pairs without a rejected answer)
or the per-token log-probs of every chosen answer, concatenated (``per_token=True``). Pairs are
forwarded as trees when ``share_prefix`` (``batching.py``): the same values, fewer tokens.

With several ranks the batches are split into contiguous shares, one per rank; a rank whose share
is short runs its first batch again (or the first batch of all) and drops the result, so every rank
runs the same number of forwards (ZeRO-3 gathers parameters inside each forward and would otherwise
wait forever). The shares are joined in rank order, which is pair order, and every rank receives the
whole result: no file has to be shared between ranks for it.
"""
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .batching import collate


def rank_and_world():
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def joined(parts):
    """``parts`` (tensors, or tuples of tensors) concatenated (element by element)."""
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


@dataclass(frozen=True)
class Scorer:
    batch_size: int   # pairs per forward
    pack: bool
    pad_id: int
    device: torch.device
    share_prefix: bool = False

    def score(self, model, pairs, per_token=False, desc=None):
        """fp32 CPU log-probs of ``pairs`` under ``model`` (a ``LogprobModel``, or the engine's
        module: called as a whole, so ZeRO-3 gathers its parameters; see the module docstring); every
        rank must call this together. ``desc`` names the progress bar (shown on rank 0)."""
        return self._score(model, pairs, lambda logps, batch: self._values(logps, batch, per_token), desc)

    def score_sums_and_tokens(self, model, pairs, desc=None):
        """``(sums, chosen tokens)``: ``score``'s two results (sequence sums, and the per-token log-probs
        of the chosen answers) from one forward per batch."""
        return self._score(model, pairs, lambda logps, batch: (self._values(logps, batch, False),
                                                                self._values(logps, batch, True)), desc)

    @torch.no_grad()
    def _score(self, model, pairs, values_of, desc):
        """``values_of(logps, batch)`` (a tensor, or a tuple of tensors) of every batch, joined in pair order."""
        rank, world = rank_and_world()
        batches = [pairs[start:start + self.batch_size] for start in range(0, len(pairs), self.batch_size)]
        per_rank = math.ceil(len(batches) / world)
        mine = batches[rank * per_rank:(rank + 1) * per_rank]
        was_training = model.training
        model.eval()
        parts = []
        try:
            for index in tqdm(range(per_rank), desc=desc, unit="batch", leave=False, disable=desc is None or rank != 0):
                pairs_now = mine[index] if index < len(mine) else batches[0]  # a repeat keeps the forwards in step
                batch = collate(pairs_now, self.pack, self.pad_id, self.share_prefix).to(self.device)
                values = values_of(model(batch), batch)
                if index < len(mine):
                    parts.append(values)
        finally:
            model.train(was_training)
        local = joined(parts) if parts else None
        if world == 1:
            return local
        gathered = [None] * world
        dist.all_gather_object(gathered, local)
        return joined([part for part in gathered if part is not None])

    @staticmethod
    def _values(logps, batch, per_token):
        if per_token:
            return logps.token_logps[:batch.num_chosen_tokens].float().cpu()  # chosen tokens come first
        sides = [logps.chosen] if logps.rejected is None else [logps.chosen, logps.rejected]
        return torch.stack(sides, dim=1).float().cpu()
