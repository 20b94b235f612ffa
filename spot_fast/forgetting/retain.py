"""Forgetting signals on a retain set during training (DESIGN.md section 6).

The retain set holds prompts with answers the starting model would give (e.g. its own answers from
the rectification ``elicit`` stage). With ``y`` teacher-forced, per completion token,
``log r = logp_theta(y_t) - logp_ref(y_t)``, and the reference log-probs computed once and cached:

    retain/nll     mean_t -logp_theta(y_t)                   NLL per token now
    retain/kl      mean_t -log r                              k1 estimate of KL(pi_ref || pi_theta) per token;
                                                              equal to the NLL change since the start
    retain/kl_k3   mean_t (r - 1 - log r)                     k3 estimate: never negative, lower variance

Both estimates are unbiased for KL(pi_ref || pi_theta) when ``y ~ pi_ref``, which is why the retain
answers should come from the starting model. One no-grad forward through the fused head, no logits.
Several ranks split the batches and sum their token statistics (all-reduce); every rank runs the
same number of forwards, because ZeRO-3 gathers parameters inside each forward.
"""
import math

import torch
import torch.distributed as dist

from spot_fast.data import collate
from spot_fast.policy import batch_logps

RETAIN_METRICS = ("retain/nll", "retain/kl", "retain/kl_k3")


def forgetting_sums(policy_logps, reference_logps):
    """float64 [4]: token count, and the sums over tokens of -logp_theta, -log r and r - 1 - log r."""
    log_r = policy_logps.double() - reference_logps.double()
    return torch.stack([
        torch.tensor(float(log_r.numel()), dtype=torch.float64, device=log_r.device),
        -policy_logps.double().sum(), -log_r.sum(), torch.expm1(log_r).sub(log_r).sum(),
    ])


def forgetting_metrics(sums):
    """The per-token means of ``forgetting_sums`` (summed over batches and ranks) by metric name."""
    count, nll, k1, k3 = sums.tolist()
    return dict(zip(RETAIN_METRICS, (nll / count, k1 / count, k3 / count)))


class RetainSet:
    """Retain pairs (chosen answer only) with their reference per-token log-probs, measured in batches."""

    def __init__(self, pairs, reference_logps, batch_size, pack, pad_id):
        lengths = [len(p.chosen_ids) for p in pairs]
        if sum(lengths) != reference_logps.numel():
            raise ValueError(f"retain set: {sum(lengths)} completion tokens but {reference_logps.numel()} reference log-probs")
        self.pairs, self.pack, self.pad_id = pairs, pack, pad_id
        self.batches = [range(start, min(start + batch_size, len(pairs))) for start in range(0, len(pairs), batch_size)]
        per_pair = reference_logps.split(lengths)
        self.reference = [torch.cat(per_pair[b.start:b.stop]) for b in self.batches]

    @torch.no_grad()
    def measure(self, model, device):
        """``RETAIN_METRICS`` of ``model`` now, over the whole set (all ranks must call this together)."""
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        was_training = model.training
        model.eval()
        for round_start in range(0, math.ceil(len(self.batches) / world) * world, world):
            index = round_start + rank
            mine = index < len(self.batches)  # a rank without a batch this round repeats batch 0, uncounted
            batch = collate([self.pairs[i] for i in self.batches[index if mine else 0]], self.pack, self.pad_id)
            logps = batch_logps(model, batch.to(device))
            if mine:
                sums += forgetting_sums(logps.token_logps, self.reference[index].to(device))
        model.train(was_training)
        if world > 1:
            dist.all_reduce(sums)
        return forgetting_metrics(sums)
