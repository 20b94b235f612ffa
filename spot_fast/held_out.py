"""Evaluation on held-out pairs (``--eval-data``), every ``--eval-every`` optimizer steps and at the end.

One no-grad forward per batch (``Scorer.score_sums_and_tokens``) gives the sequence sums of both
answers and the per-token log-probs of the chosen answers. With the reference scored once at the start
(sums for the objectives with a reference, per-token chosen log-probs always; cached like every other
reference), the metrics are the training metrics' held-out counterparts:

    eval/loss                  the objective's loss (spot_bco with the run's current reward shift delta,
                               not updated by evaluation); not for pear (its weights need behaviour
                               log-probs the held-out pairs do not have)
    eval/rewards/chosen ...    implicit rewards, margin and accuracy (objectives with a reference)
    eval/nll                   NLL per chosen token
    eval/kl, eval/kl_k3        KL(pi_ref || pi_theta) per chosen token: the k1 and k3 estimates of the
                               retain set's forgetting signals (``forgetting.retain``)
"""
import torch

from spot_kernels import implicit_reward, preference_loss

from .forgetting.retain import forgetting_metrics, forgetting_sums
from .objective import reward_metrics


class HeldOutSet:
    """Held-out pairs with their reference log-probs: ``reference_tokens`` (per chosen token) and
    ``reference_sums`` ([P, 2] or [P, 1], or None where the objective has no reference)."""

    def __init__(self, pairs, reference_tokens, reference_sums, scorer):
        tokens = sum(len(p.chosen_ids) for p in pairs)
        if tokens != reference_tokens.numel():
            raise ValueError(f"held-out set: {tokens} chosen tokens but {reference_tokens.numel()} reference log-probs")
        self.pairs, self.reference_tokens, self.reference_sums, self.scorer = pairs, reference_tokens, reference_sums, scorer
        self.chosen_lengths = torch.tensor([len(p.chosen_ids) for p in pairs])

    def measure(self, model, objective, desc=None):
        """The metrics of the module docstring for ``model`` now (every rank must call this together)."""
        sums, tokens = self.scorer.score_sums_and_tokens(model, self.pairs, desc=desc)
        signals = forgetting_metrics(forgetting_sums(tokens, self.reference_tokens))
        results = {"eval/nll": signals["retain/nll"], "eval/kl": signals["retain/kl"], "eval/kl_k3": signals["retain/kl_k3"]}
        if not objective.needs_reference and not objective.needs_behavior:  # sft: the chosen answers' NLL
            results["eval/loss"] = preference_loss("sft", sums[:, 0], chosen_lengths=self.chosen_lengths).mean()
        elif objective.needs_reference:
            reference, beta = self.reference_sums, objective.beta
            rejected = sums[:, 1] if objective.needs_rejected else None
            ref_rejected = reference[:, 1] if objective.needs_rejected else None
            chosen_rewards = implicit_reward(sums[:, 0], reference[:, 0], beta)
            rejected_rewards = implicit_reward(rejected, ref_rejected, beta) if objective.needs_rejected else None
            results.update(reward_metrics(chosen_rewards, rejected_rewards, prefix="eval/"))
            delta = float(objective.reward_shift.value) if objective.has_state else 0.0
            results["eval/loss"] = preference_loss(objective.loss, sums[:, 0], rejected, reference[:, 0], ref_rejected,
                                                   beta=beta, delta=delta).mean()
        return {name: float(value) for name, value in results.items()}
