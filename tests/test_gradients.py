"""Every objective's gradient through the trainer's path (fused head, packed or padded batches,
sequence sums, rewards, delta) equals the gradient of the same loss built from the model's own
materialized logits, in float64, for the LM-head weight and for parameters of the model body.

A wrong gradient that leaves the loss value unchanged (a detach, a dropped side, a mis-scattered
token) fails here and nowhere else.
"""
import pytest
import torch
import torch.nn.functional as F

from spot_fast.batching import collate
from spot_fast.data import load_pairs
from spot_fast.logprob_head import batch_logps, install_logprob_head
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer
from spot_fast.config import parse_config
from spot_fast.objective import OBJECTIVES, Objective, micro_batch_loss
from spot_kernels import LOSS_KINDS, PearConfig, RewardShift, pear_loss

from hf_logps import float64_norms, perturbed

BETA = 0.5  # large enough that the sigmoid terms are far from their linear regime
BODY_PARAMETERS = ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                   "model.layers.1.mlp.down_proj.weight", "model.norm.weight")


def token_logps(model, prompt, completion):
    """float64 [len(completion)] log-probs from ``model(ids).logits`` (differentiable)."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0].log_softmax(-1)
    positions = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
    return logits[positions, ids[0, positions + 1]]


def direct_loss(objective, model, pairs, reference):
    """The objective of docs/design.md section 4 written out from materialized logits."""
    logsig = F.logsigmoid
    chosen_tokens = [token_logps(model, p.prompt_ids, p.chosen_ids) for p in pairs]
    chosen = torch.stack([t.sum() for t in chosen_tokens])
    if objective == "sft":
        return (-chosen / torch.tensor([len(p.chosen_ids) for p in pairs])).mean()
    if objective == "pear":
        seq_index = torch.cat([torch.full((len(p.chosen_ids),), i) for i, p in enumerate(pairs)])
        behavior = torch.cat([p.behavior_logps for p in pairs]).double()
        return pear_loss(torch.cat(chosen_tokens), behavior, seq_index, len(pairs), PearConfig(block_size=4))[0].mean()
    r_chosen = BETA * (chosen - reference[:, 0])
    if objective == "reward_sft":
        return -logsig(r_chosen).mean()
    rejected = torch.stack([token_logps(model, p.prompt_ids, p.rejected_ids).sum() for p in pairs])
    r_rejected = BETA * (rejected - reference[:, 1])
    if objective == "dpo":
        return -logsig(r_chosen - r_rejected).mean()
    if objective == "spot_bce":
        return (-logsig(r_chosen) - logsig(-r_rejected)).mean()
    delta = torch.cat([r_chosen, r_rejected]).detach().mean().float()  # update-then-use on the first batch; fp32 state
    return (-logsig(r_chosen - delta) - logsig(-(r_rejected - delta))).mean()


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_gradient_equals_the_gradient_from_materialized_logits(objective, pack):
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    with_rejected = OBJECTIVES[objective].needs_rejected
    pairs = load_pairs(ASSETS / "pairs.jsonl", tokenizer, 8192, with_rejected=with_rejected)[0][5:8]
    start = float64_norms(load_model(BUILTIN_MODEL, dtype=torch.float64))
    with torch.no_grad():
        reference = torch.stack([torch.stack([token_logps(start, p.prompt_ids, ids).sum()
                                              for ids in (p.chosen_ids, p.rejected_ids or p.chosen_ids)])
                                 for p in pairs])
        for p in pairs:
            p.behavior_logps = token_logps(start, p.prompt_ids, p.chosen_ids).float()
    plain = float64_norms(perturbed(load_model(BUILTIN_MODEL, dtype=torch.float64), scale=0.05))  # rewards far from 0
    policy = float64_norms(install_logprob_head(load_model(BUILTIN_MODEL, dtype=torch.float64), backend="chunked"))
    policy.load_state_dict(plain.state_dict())

    batch = collate(pairs, pack=pack, pad_id=tokenizer.pad_token_id)
    pear = PearConfig(block_size=4) if objective == "pear" else None
    loss, _, _ = micro_batch_loss(batch_logps(policy, batch), batch, reference, Objective(objective, BETA, RewardShift(), pear))
    loss.backward()
    expected = direct_loss(objective, plain, pairs, reference)
    expected.backward()

    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    ours, theirs = dict(policy.named_parameters()), dict(plain.named_parameters())
    for name in ("lm_head.weight", *BODY_PARAMETERS):
        scale = float(theirs[name].grad.abs().max())
        assert scale > 1e-6, name  # the comparison means something
        torch.testing.assert_close(ours[name].grad, theirs[name].grad, rtol=1e-9, atol=1e-12 * scale,
                                   msg=lambda report: f"gradient of {name}: {report}")


def test_every_objective_is_declared_once_and_offered():
    """The objectives table is the one declaration: every loss of ``spot_kernels.losses`` has an entry,
    ``--loss`` offers exactly the table's objectives, and a name outside it is refused with the options."""
    assert set(LOSS_KINDS) <= set(OBJECTIVES), f"losses without an objectives entry: {set(LOSS_KINDS) - set(OBJECTIVES)}"
    for name in OBJECTIVES:
        assert parse_config(["--loss", name]).loss == name
    with pytest.raises(ValueError, match="unknown objective 'hinge'"):
        Objective("hinge")
