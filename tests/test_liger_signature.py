"""The Liger-signature modules held to Liger-Kernel's own modules on the same inputs (values and
gradients; Liger's DPO loss is plain PyTorch, its cross entropy runs in the Triton interpreter on the
CPU) and to a float64 reference built from materialized logits, for every served loss type."""
import pytest
import torch
import torch.nn.functional as F

from spot_kernels import preference_loss
from spot_kernels.liger_signature import FusedLinearCrossEntropyLoss, FusedLinearDPOLoss
from spot_kernels.reward_shift import RewardShift

PAIRS, LENGTH, HIDDEN, VOCAB = 3, 7, 24, 130


def inputs(seed=0):
    """[2B, T, H] policy and reference hidden states, weights, biases and targets (prompts ignored)."""
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator)
    target = torch.randint(0, VOCAB, (2 * PAIRS, LENGTH), generator=generator)
    target[:, :2] = -100
    target[1, :5] = -100
    return dict(_input=randn(2 * PAIRS, LENGTH, HIDDEN), lin_weight=randn(VOCAB, HIDDEN) * 0.5, bias=randn(VOCAB),
                target=target, ref_input=randn(2 * PAIRS, LENGTH, HIDDEN),
                ref_weight=randn(VOCAB, HIDDEN) * 0.5, ref_bias=randn(VOCAB))


def run(module, data, dtype=torch.float32):
    """(loss, aux outputs, gradients of _input, lin_weight and bias) of ``module`` on ``data`` in ``dtype``."""
    leaves = {k: v.detach().to(dtype).requires_grad_(k in ("_input", "lin_weight", "bias")) if v.is_floating_point() else v
              for k, v in data.items()}
    loss, aux = module(**leaves)
    loss.backward()
    return loss, aux, [leaves[k].grad for k in ("_input", "lin_weight", "bias")]


def close(ours, theirs, tol):
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("loss_type", ["sigmoid", "bco_pair"])
@pytest.mark.parametrize("average_log_prob,compute_nll_loss,use_ref_model",
                         [(False, False, True), (True, True, True), (False, True, False)])
@pytest.mark.parametrize("ignore_index", [-100, -1])
def test_dpo_equals_liger(loss_type, average_log_prob, compute_nll_loss, use_ref_model, ignore_index):
    """Every output and gradient as Liger's, with Liger's default ignore index and another one (its
    tests use -1): the per-row token counts of ``average_log_prob`` and the NLL follow it."""
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    options = dict(beta=0.3, alpha=0.7, loss_type=loss_type, average_log_prob=average_log_prob,
                   compute_nll_loss=compute_nll_loss, use_ref_model=use_ref_model, ignore_index=ignore_index)
    data = inputs()
    data["target"] = data["target"].masked_fill(data["target"] == -100, ignore_index)
    ours = run(FusedLinearDPOLoss(**options), data)
    theirs = run(LigerFusedLinearDPOLoss(compiled=False, **options), data)
    names = ("chosen_logps", "rejected_logps", "chosen_logits_mean", "rejected_logits_mean", "nll_loss",
             "chosen_rewards", "rejected_rewards", "loss", "d_input", "dlin_weight", "dbias")
    for name, a, b in zip(names, (*ours[1], ours[0], *ours[2]), (*theirs[1], theirs[0], *theirs[2])):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{name} with ignore_index={ignore_index}: {m}")


def reference_dpo(kind, data, beta, delta):
    """The loss in float64 from materialized logits and ``preference_loss``."""
    def row_logps(hidden, weight, bias):
        logprobs = (hidden.double() @ weight.double().T + bias.double()).log_softmax(-1)
        keep = data["target"] != -100
        return (logprobs.gather(-1, data["target"].clamp(min=0)[..., None])[..., 0] * keep).sum(1)
    policy = row_logps(data["_input"], data["lin_weight"], data["bias"])
    with torch.no_grad():
        ref = row_logps(data["ref_input"], data["ref_weight"], data["ref_bias"])
    return preference_loss(kind, *policy.chunk(2), *ref.chunk(2), beta=beta, delta=delta).mean()


@pytest.mark.parametrize("loss_type", ["sigmoid", "bco_pair", "dpo", "spot_bce", "spot_bco", "reward_sft"])
def test_dpo_equals_the_float64_reference(loss_type):
    data = inputs(seed=1)
    shift = RewardShift()
    ours = run(FusedLinearDPOLoss(beta=0.3, loss_type=loss_type, reward_shift=shift), data)
    kind = {"sigmoid": "dpo", "bco_pair": "spot_bce"}.get(loss_type, loss_type)
    leaves = {k: v.detach().double().requires_grad_(k in ("_input", "lin_weight", "bias")) if v.is_floating_point() else v
              for k, v in data.items()}
    delta = shift.value.double() if kind == "spot_bco" else 0.0
    loss = reference_dpo(kind, leaves, 0.3, delta)
    loss.backward()
    close(ours[0], loss, 1e-5)
    for a, name in zip(ours[2], ("_input", "lin_weight", "bias")):
        close(a, leaves[name].grad, 1e-5)
    if kind == "spot_bco":
        rewards = torch.cat(ours[1][5:7])
        torch.testing.assert_close(shift.value, rewards.mean())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_equals_liger_and_the_float64_reference(reduction):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    data = inputs(seed=2)
    hidden, target = data["_input"].reshape(-1, HIDDEN), data["target"].reshape(-1)

    def run_ce(module, dtype):
        x, w, b = (t.detach().to(dtype).requires_grad_() for t in (hidden, data["lin_weight"], data["bias"]))
        loss = module(w, x, target, b)
        loss = loss.loss if hasattr(loss, "token_accuracy") else loss
        (loss.sum() if reduction == "none" else loss).backward()
        return loss, (x.grad, w.grad, b.grad)

    ours = run_ce(FusedLinearCrossEntropyLoss(reduction=reduction), torch.float32)
    liger = run_ce(LigerFusedLinearCrossEntropyLoss(reduction=reduction), torch.float32)
    exact = run_ce(lambda w, x, t, b: F.cross_entropy(x @ w.T + b, t, reduction=reduction), torch.float64)
    for theirs in (liger, exact):
        close(ours[0], theirs[0], 1e-5)
        for a, b in zip(ours[1], theirs[1]):
            close(a, b, 1e-5)
    accuracy = FusedLinearCrossEntropyLoss(reduction=reduction, return_token_accuracy=True)(
        data["lin_weight"], hidden, target, data["bias"]).token_accuracy
    liger_accuracy = LigerFusedLinearCrossEntropyLoss(reduction=reduction, return_token_accuracy=True)(
        data["lin_weight"], hidden, target, data["bias"]).token_accuracy
    assert accuracy.shape == liger_accuracy.shape, f"token_accuracy shape with reduction={reduction!r}"
    assert accuracy.dtype == liger_accuracy.dtype, f"token_accuracy dtype with reduction={reduction!r}"
    close(accuracy, liger_accuracy, 0)


def test_what_needs_the_logits_is_refused():
    with pytest.raises(ValueError, match="loss_type 'hinge' is not supported"):
        FusedLinearDPOLoss(loss_type="hinge")
    with pytest.raises(ValueError, match="label_smoothing=0.1"):
        FusedLinearDPOLoss(label_smoothing=0.1)
    with pytest.raises(ValueError, match="lse_square_scale=0.1"):
        FusedLinearCrossEntropyLoss(lse_square_scale=0.1)
    with pytest.raises(ValueError, match="softcap=30.0"):
        FusedLinearCrossEntropyLoss(softcap=30.0)
