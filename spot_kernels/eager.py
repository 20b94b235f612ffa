"""The eager specification of ``linear_logprobs``: materialized logits, log-softmax, gather.

This is the contract every fast backend must reproduce (docs/design.md section 3) and the baseline the
benchmarks compare against. It holds the full [N, V] logits (in the input dtype) plus their fp32
log-softmax, so it is only for tests, small shapes and measurements.
"""
import torch


def eager_linear_logprobs(hidden, weight, targets, bias=None, ignore_index=-100, with_stats=False):
    """Per-token log-probs ``z[i, t_i] - logsumexp(z[i])`` with ``z = hidden @ weight.T (+ bias)``.

    Softmax math runs in fp32 (float64 for float64 inputs: the high-precision values the tests
    hold every backend to). Returns ``(logp, entropy, target_is_argmax)``; the last two are None unless ``with_stats``.
    Ignored tokens get log-prob 0, entropy 0 and ``target_is_argmax`` False; ``target_is_argmax``
    is ``argmax == target``, so of tied maxima only the first counts. Autograd does the backward.
    """
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logsoftmax = logits.log_softmax(dim=-1)
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, 0).unsqueeze(1)
    logp = logsoftmax.gather(1, safe_targets).squeeze(1) * keep
    if not with_stats:
        return logp, None, None
    with torch.no_grad():
        entropy = -(logsoftmax.exp() * logsoftmax).sum(dim=-1) * keep
        target_is_argmax = (logits.argmax(dim=-1) == targets) & keep  # the first of tied maxima, as TRL counts
    return logp, entropy, target_is_argmax
