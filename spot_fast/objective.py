"""The objectives the trainer offers, one table, and the loss of one micro-batch with its metrics.

    per-token log-probs (fused head)  ->  sequence sums  ->  implicit rewards r = beta * (logp - logp_ref)
    ->  delta (spot_bco: update-then-use)  ->  per-example loss (docs/design.md section 4)  ->  mean over pairs

PEAR takes the per-token log-probs and the behaviour log-probs instead (importance-weighted NLL).
Metrics are detached 0-d tensors (or Python numbers) computed without host synchronisation; the
trainer averages them over micro-batches and ranks when it logs.

``OBJECTIVES`` is the one place an objective is declared: what it reads (the rejected answers, the
reference's log-probs, the behaviour log-probs), whether it carries training state (saved with
checkpoints), and its per-example loss. Config's ``--loss`` choices, the trainer's data and scoring
decisions and the gradient tests are read from it, so a new objective is one entry (plus its loss in
``spot_kernels.losses`` where it is a function of sequence sums).
"""
from dataclasses import dataclass
from typing import Callable

from spot_kernels import PearConfig, RewardShift, implicit_reward, pear_loss, preference_loss


def _sft_loss(logps, batch, reference, objective, metrics):
    return preference_loss("sft", logps.chosen, chosen_lengths=batch.chosen_lengths)


def _reward_loss(logps, batch, reference, objective, metrics):
    """A loss of implicit rewards against the reference (``spot_kernels.preference_loss``); adds the
    reward metrics, and spot_bco's delta (updated with this micro-batch's rewards, then used)."""
    paired = objective.needs_rejected
    ref_chosen, ref_rejected = reference[:, 0], reference[:, 1] if paired else None
    chosen_rewards = implicit_reward(logps.chosen, ref_chosen, objective.beta).detach()
    rejected_rewards = implicit_reward(logps.rejected, ref_rejected, objective.beta).detach() if paired else None
    metrics.update(reward_metrics(chosen_rewards, rejected_rewards))
    delta = 0.0
    if objective.has_state:
        delta = metrics["delta"] = objective.reward_shift.update(chosen_rewards, rejected_rewards)
    return preference_loss(objective.loss, logps.chosen, logps.rejected, ref_chosen, ref_rejected,
                           beta=objective.beta, delta=delta)


def _pear_loss(logps, batch, reference, objective, metrics):
    per_example, weights = pear_loss(logps.token_logps, batch.behavior_logps, batch.seq_index,
                                     batch.num_sequences, objective.pear, check=False)  # collate's indices are in range
    metrics.update(pear_metrics(logps.token_logps, batch.behavior_logps, weights, objective.pear))
    return per_example


@dataclass(frozen=True)
class ObjectiveSpec:
    """What an objective reads and how it scores a micro-batch (``OBJECTIVES``)."""
    needs_rejected: bool   # reads and scores the rejected answers
    needs_reference: bool  # implicit rewards against the reference's cached log-probs
    needs_behavior: bool   # the behaviour policy's log-probs of the chosen tokens (PEAR)
    has_state: bool        # training state saved with checkpoints (spot_bco's reward shift)
    loss: Callable         # (logps, batch, reference, objective, metrics) -> per-example loss; may add metrics


OBJECTIVES = {
    "sft": ObjectiveSpec(needs_rejected=False, needs_reference=False, needs_behavior=False, has_state=False, loss=_sft_loss),
    "reward_sft": ObjectiveSpec(False, True, False, False, _reward_loss),
    "dpo": ObjectiveSpec(True, True, False, False, _reward_loss),
    "spot_bce": ObjectiveSpec(True, True, False, False, _reward_loss),
    "spot_bco": ObjectiveSpec(True, True, False, True, _reward_loss),
    "pear": ObjectiveSpec(False, False, True, False, _pear_loss),
}


@dataclass
class Objective:
    loss: str                  # a key of OBJECTIVES
    beta: float = 0.1
    reward_shift: RewardShift = None  # spot_bco's delta
    pear: PearConfig = None           # pear's weights

    def __post_init__(self):
        if self.loss not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.loss!r}; expected one of {tuple(OBJECTIVES)}")

    @property
    def needs_rejected(self):
        return OBJECTIVES[self.loss].needs_rejected

    @property
    def needs_reference(self):
        return OBJECTIVES[self.loss].needs_reference

    @property
    def needs_behavior(self):
        return OBJECTIVES[self.loss].needs_behavior

    @property
    def has_state(self):
        return OBJECTIVES[self.loss].has_state


def reward_metrics(chosen, rejected, prefix=""):
    """Mean implicit rewards (and margin and accuracy when there is a rejected side), by metric name."""
    metrics = {f"{prefix}rewards/chosen": chosen.mean()}
    if rejected is not None:
        metrics.update({f"{prefix}rewards/rejected": rejected.mean(), f"{prefix}rewards/margin": (chosen - rejected).mean(),
                        f"{prefix}rewards/accuracy": (chosen > rejected).float().mean()})
    return metrics


def pear_metrics(policy_logps, behavior_logps, weights, pear):
    """Mean weight, the fractions of weights at each clip, and the mean (absolute) log-ratio before clipping."""
    at_min, at_max = pear.weight_min * (1 + 1e-6), pear.weight_max * (1 - 1e-6)
    log_ratio = policy_logps.detach() - behavior_logps
    return {"pear/weight_mean": weights.mean(), "pear/weight_at_min": (weights <= at_min).float().mean(),
            "pear/weight_at_max": (weights >= at_max).float().mean(),
            "pear/log_ratio": log_ratio.mean(), "pear/abs_log_ratio": log_ratio.abs().mean()}


def micro_batch_loss(logps, batch, reference, objective):
    """Loss of one micro-batch (mean over its pairs), its detached metrics, and what each metric is a
    mean over: ``counts[name]`` is its number of pairs, chosen tokens (``chosen/*``), scored tokens
    (``pear/*``) or token slots (``padding_fraction``), so that ``MetricsWindow`` pools micro-batches
    and ranks into the mean over the whole step, however its pairs were split.

    ``logps`` is the ``BatchLogps`` of ``batch`` under the policy (``LogprobModel``'s forward);
    ``reference`` is the [B, 2] (or [B, 1]) reference log-probs of the batch's pairs for the
    objectives that need them, else None; ``pear`` reads the behaviour log-probs from the batch.
    The per-example loss is the objective's own (``OBJECTIVES``).
    """
    chosen = slice(0, batch.num_chosen_tokens)  # chosen tokens come first: a view, no host sync
    metrics = {
        "chosen/nll": -logps.token_logps[chosen].detach().mean(),
        "chosen/entropy": logps.entropy[chosen].mean(),
        "chosen/token_accuracy": logps.target_is_argmax[chosen].float().mean(),
        "padding_fraction": batch.padding_fraction,
    }
    per_example = OBJECTIVES[objective.loss].loss(logps, batch, reference, objective, metrics)
    loss = per_example.mean()
    metrics["loss"] = loss.detach()
    counts = {name: count_of(name, batch, logps) for name in metrics}
    return loss, metrics, counts


def count_of(name, batch, logps):
    """How many things metric ``name`` of ``micro_batch_loss`` averages over in ``batch``."""
    if name.startswith("chosen/"):
        return batch.num_chosen_tokens
    if name.startswith("pear/"):
        return logps.token_logps.numel()
    if name == "padding_fraction":
        return batch.input_ids.numel()
    return batch.num_pairs
