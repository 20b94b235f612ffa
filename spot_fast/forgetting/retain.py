"""Forgetting signals on a retain set during training (docs/design.md section 6).

The retain set holds prompts with answers the starting model would give (e.g. its own answers from
the rectification ``elicit`` stage). With ``y`` teacher-forced, per completion token,
``log r = logp_theta(y_t) - logp_ref(y_t)``, and the reference log-probs computed once and cached:

    retain/nll     mean_t -logp_theta(y_t)                   NLL per token now
    retain/kl      mean_t -log r                              k1 estimate of KL(pi_ref || pi_theta) per token;
                                                              equal to the NLL change since the start
    retain/kl_k3   mean_t (r - 1 - log r)                     k3 estimate: never negative, lower variance

Both estimates are unbiased for KL(pi_ref || pi_theta) when ``y ~ pi_ref``, which is why the retain
answers should come from the starting model. The policy's log-probs come from the same ``Scorer`` as
every other no-grad pass (one forward per batch through the fused head, no logits; ranks split the
batches and each receives the whole result).
"""
import torch

RETAIN_METRICS = ("retain/nll", "retain/kl", "retain/kl_k3")


def forgetting_sums(policy_logps, reference_logps):
    """float64 [4]: token count, and the sums over tokens of -logp_theta, -log r and r - 1 - log r."""
    log_r = policy_logps.double() - reference_logps.double()
    return torch.stack([
        torch.tensor(float(log_r.numel()), dtype=torch.float64, device=log_r.device),
        -policy_logps.double().sum(), -log_r.sum(), torch.expm1(log_r).sub(log_r).sum(),
    ])


def forgetting_metrics(sums):
    """The per-token means of ``forgetting_sums`` (summed over batches) by metric name."""
    count, nll, k1, k3 = sums.tolist()
    return dict(zip(RETAIN_METRICS, (nll / count, k1 / count, k3 / count)))


class RetainSet:
    """Retain pairs (chosen answer only) with their reference per-token log-probs."""

    def __init__(self, pairs, reference_logps, scorer):
        tokens = sum(len(p.chosen_ids) for p in pairs)
        if tokens != reference_logps.numel():
            raise ValueError(f"retain set: {tokens} completion tokens but {reference_logps.numel()} reference log-probs")
        self.pairs, self.reference, self.scorer = pairs, reference_logps, scorer

    def measure(self, model):
        """``RETAIN_METRICS`` of ``model`` now, over the whole set (all ranks must call this together)."""
        policy = self.scorer.score(model, self.pairs, per_token=True)
        return forgetting_metrics(forgetting_sums(policy, self.reference))
