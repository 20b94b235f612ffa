"""The loss of one micro-batch under the configured objective, and its metrics.

    per-token log-probs (fused head)  ->  sequence sums  ->  implicit rewards r = beta * (logp - logp_ref)
    ->  delta (spot_bco: update-then-use)  ->  per-example loss (docs/design.md section 4)  ->  mean over pairs

PEAR takes the per-token log-probs and the behaviour log-probs instead (importance-weighted NLL).
Metrics are detached 0-d tensors (or Python numbers) computed without host synchronisation; the
trainer averages them over micro-batches and ranks when it logs.
"""
from dataclasses import dataclass


from spot_kernels import PearConfig, RewardShift, implicit_reward, pear_loss, preference_loss

PAIRED_OBJECTIVES = ("dpo", "spot_bce", "spot_bco")      # read and score the rejected answers
REFERENCE_OBJECTIVES = ("reward_sft", *PAIRED_OBJECTIVES)  # need reference log-probs


@dataclass
class Objective:
    loss: str                  # one of config.OBJECTIVES
    beta: float = 0.1
    reward_shift: RewardShift = None  # spot_bco's delta
    pear: PearConfig = None           # pear's weights

    @property
    def needs_rejected(self):
        return self.loss in PAIRED_OBJECTIVES

    @property
    def needs_reference(self):
        return self.loss in REFERENCE_OBJECTIVES


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
    """
    chosen = slice(0, batch.num_chosen_tokens)  # chosen tokens come first: a view, no host sync
    metrics = {
        "chosen/nll": -logps.token_logps[chosen].detach().mean(),
        "chosen/entropy": logps.entropy[chosen].mean(),
        "chosen/token_accuracy": logps.target_is_argmax[chosen].float().mean(),
        "padding_fraction": batch.padding_fraction,
    }
    if objective.loss == "pear":
        per_example, weights = pear_loss(logps.token_logps, batch.behavior_logps, batch.seq_index,
                                         batch.num_sequences, objective.pear, check=False)  # collate's indices are in range
        metrics.update(pear_metrics(logps.token_logps, batch.behavior_logps, weights, objective.pear))
    elif objective.loss == "sft":
        per_example = preference_loss("sft", logps.chosen, chosen_lengths=batch.chosen_lengths)
    else:
        ref_chosen = reference[:, 0]
        ref_rejected = reference[:, 1] if objective.needs_rejected else None
        chosen_rewards = implicit_reward(logps.chosen, ref_chosen, objective.beta).detach()
        rejected_rewards = implicit_reward(logps.rejected, ref_rejected, objective.beta).detach() if objective.needs_rejected else None
        metrics.update(reward_metrics(chosen_rewards, rejected_rewards))
        delta = 0.0
        if objective.loss == "spot_bco":
            delta = metrics["delta"] = objective.reward_shift.update(chosen_rewards, rejected_rewards)
        per_example = preference_loss(objective.loss, logps.chosen, logps.rejected, ref_chosen, ref_rejected,
                                      beta=objective.beta, delta=delta)
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
