"""Sequence sums and the preference objectives of docs/design.md section 4, as pure PyTorch functions.

With r = beta * (logp_policy(y|x) - logp_ref(y|x)) (sequence sums of completion-token log-probs, fp32;
float64 where the inputs are float64, so that tests can hold the whole path to a float64 reference):

    sft         -logp(y+) / |y+|
    reward_sft  -log sigmoid(r+)
    dpo         -log sigmoid(r+ - r-)
    spot_bce    -log sigmoid(r+) - log sigmoid(-r-)
    spot_bco    -log sigmoid(r+ - delta) - log sigmoid(-(r- - delta))     (TRL 0.20 ``bco_pair``)

These are O(number of tokens) and cheap next to the LM head; they are the specification that any
fused variant must match. Every function returns per-example losses (no reduction).
"""
import torch
import torch.nn.functional as F

LOSS_KINDS = ("sft", "reward_sft", "dpo", "spot_bce", "spot_bco")


def sequence_logps(token_logps, seq_index, num_seqs):
    """Sum of ``token_logps`` per sequence: ``out[s] = sum(token_logps[i] for i with seq_index[i] == s)``.

    ``token_logps`` [N] (ignored tokens already 0), ``seq_index`` [N] integer in [0, num_seqs).
    Returns [num_seqs] fp32, differentiable w.r.t. ``token_logps``; empty sequences sum to 0.
    """
    check_sequence_index(seq_index, num_seqs, token_logps=token_logps)
    return segment_sum(at_least_fp32(token_logps), seq_index, num_seqs)


def check_sequence_index(seq_index, num_seqs, **per_token):
    """Raises unless every tensor of ``per_token`` (name -> tensor) and ``seq_index`` are [N] and
    ``seq_index`` holds integers in [0, num_seqs). One host sync (the range)."""
    shapes = {name: tuple(t.shape) for name, t in {**per_token, "seq_index": seq_index}.items()}
    if len(set(shapes.values())) != 1 or len(shapes["seq_index"]) != 1:
        raise ValueError(f"{' and '.join(shapes)} must be [N] tensors of one length; got {shapes}")
    if seq_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"seq_index must be int64 or int32; got {seq_index.dtype}")
    if int(num_seqs) <= 0:
        raise ValueError(f"num_seqs must be positive; got {num_seqs}")
    if seq_index.numel():
        low, high = torch.stack(torch.aminmax(seq_index)).tolist()
        if low < 0 or high >= num_seqs:
            raise ValueError(f"seq_index values must lie in [0, {num_seqs}); got range [{low}, {high}]")


def segment_sum(values, seq_index, num_seqs):
    """``out[s] = sum(values[i] for i with seq_index[i] == s)``, in the dtype of ``values``; unchecked."""
    out = torch.zeros(num_seqs, dtype=values.dtype, device=values.device)
    return out.index_add(0, seq_index.long(), values)


def at_least_fp32(values):
    """``values`` in fp32, or unchanged when wider (float64)."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def implicit_reward(policy_logps, ref_logps, beta):
    """r = beta * (logp_policy - logp_ref), per sequence."""
    return beta * (at_least_fp32(policy_logps) - at_least_fp32(ref_logps))


def _require(kind, **tensors):
    missing = [name for name, value in tensors.items() if value is None]
    if missing:
        raise ValueError(f"loss {kind!r} needs {', '.join(missing)}")
    shapes = {name: tuple(value.shape) for name, value in tensors.items()}
    if len(set(shapes.values())) != 1 or any(len(s) != 1 for s in shapes.values()):
        raise ValueError(f"loss {kind!r} needs 1-D tensors of one shape; got {shapes}")


def preference_loss(kind, policy_chosen, policy_rejected=None, ref_chosen=None, ref_rejected=None,
                    beta=0.1, delta=0.0, chosen_lengths=None):
    """Per-example loss of ``kind`` (one of ``LOSS_KINDS``) from per-sequence log-prob sums.

    ``sft`` uses only ``policy_chosen`` and ``chosen_lengths`` (completion token counts);
    ``reward_sft`` ignores the rejected side; ``delta`` (float or 0-d tensor) is used by ``spot_bco``.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSS_KINDS}")
    if kind == "sft":
        _require(kind, policy_chosen=policy_chosen, chosen_lengths=chosen_lengths)
        return -at_least_fp32(policy_chosen) / chosen_lengths.clamp(min=1)
    if kind == "reward_sft":
        _require(kind, policy_chosen=policy_chosen, ref_chosen=ref_chosen)
        return -F.logsigmoid(implicit_reward(policy_chosen, ref_chosen, beta))
    _require(kind, policy_chosen=policy_chosen, policy_rejected=policy_rejected,
             ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    chosen = implicit_reward(policy_chosen, ref_chosen, beta)
    rejected = implicit_reward(policy_rejected, ref_rejected, beta)
    if kind == "dpo":
        return -F.logsigmoid(chosen - rejected)
    if kind == "spot_bce":
        return -F.logsigmoid(chosen) - F.logsigmoid(-rejected)
    return -F.logsigmoid(chosen - delta) - F.logsigmoid(-(rejected - delta))
