"""TRL's ``DPOTrainer`` and ``GRPOTrainer`` with every log-prob computed by ``spot_kernels`` (TRL 1.16).

    from spot_kernels.trl_integration import SpotDPOTrainer as DPOTrainer      # or SpotGRPOTrainer
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=DPOConfig(...), train_dataset=pairs, ...)

How: TRL computes every log-prob these trainers use (DPO's policy and reference, precomputed or
not; GRPO's policy, old and reference log-probs and their entropies) through one entry point: the
model's forward called with ``labels=..., fused_lm_head=True``, which returns a
``trl.trainer.utils.FusedCausalLMOutput``. TRL installs that forward with ``add_fused_lm_head`` while
the trainer is constructed, on the policy (the base model under PEFT) and on the reference model.
The subclasses construct TRL's trainer with ``add_fused_lm_head`` below in its place: a forward that
answers from ``causal_lm_logprobs`` (body, label shift, the fused head with the trainer's temperature;
logits never formed). Everything else - the loss types, the reference through disabled PEFT adapters,
precomputed reference log-probs, DeepSpeed through accelerate (the head module is called inside the
forward the engine wraps, so ZeRO-3 gathers it), the metrics - is TRL's own code, unchanged.
Reference log-probs precomputed this way are cached under a key of their own, apart from TRL's.

What needs the logits themselves is refused at construction, never approximated: DPO's WPO weighting
(``use_weighting``, it needs log sum p^2), GRPO's entropy bonus (``entropy_coef``,
``use_adaptive_entropy``: the kernel's entropy has no gradient), models whose logits are scaled or
soft-capped, mixture-of-experts models (the router loss), vision-language models, FSDP.
"""
import contextlib
import functools
import inspect
import types

import trl
from trl.trainer import dpo_trainer, grpo_trainer
from trl.trainer.utils import FusedCausalLMOutput

from .causal_lm import causal_lm_logprobs

SERVED_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def add_fused_lm_head(model, temperature=1.0, cast_lm_head_to_fp32=False, outputs=("log_probs",), backend="auto"):
    """TRL's ``add_fused_lm_head`` contract served by ``causal_lm_logprobs``: afterwards
    ``model(..., labels=labels, fused_lm_head=True)`` returns a ``FusedCausalLMOutput`` with the
    requested per-token ``outputs`` ([B, L-1], zero where the label is -100; ``shift_labels`` are
    scored unshifted); without ``fused_lm_head`` the model's forward is unchanged. With
    ``cast_lm_head_to_fp32`` TRL has already made the head float32; the hidden states are cast to
    the head's dtype either way."""
    refuse_unservable_model(model)
    unserved = sorted(set(outputs) - set(SERVED_OUTPUTS))
    if unserved:
        raise ValueError(f"spot_kernels cannot compute {', '.join(unserved)} without the logits "
                         f"(served: {', '.join(SERVED_OUTPUTS)})")
    previous_forward = model.forward
    with_stats = bool(set(outputs) - {"log_probs"})

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            extra = dict(labels=labels, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch)
            return previous_forward(*args, **kwargs, **{k: v for k, v in extra.items() if v is not None})
        if args:
            raise TypeError("the fused forward takes the model's inputs by name (input_ids=..., attention_mask=...)")
        out = causal_lm_logprobs(self, labels=labels if shift_labels is None else shift_labels,
                                 shift_labels=shift_labels is None, temperature=temperature,
                                 return_stats=with_stats, backend=backend, **kwargs)
        count = out.mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        requested = lambda name, value: value if name in outputs else None
        return FusedCausalLMOutput(
            loss=-out.logp.sum() / count, log_probs=out.logp, entropy=requested("entropy", out.entropy),
            mean_logits=requested("mean_logits", out.mean_logit), is_top1=requested("is_top1", out.target_is_argmax),
            label_mask=out.mask)

    model.forward = types.MethodType(forward, model)


def refuse_unservable_model(model):
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        raise ValueError(f"{type(model).__name__}: vision-language models are not served by spot_kernels")
    scaled = [name for name in _SCALED_LOGITS if getattr(text_config, name, None) not in (None, 1.0)]
    if scaled:
        raise ValueError(f"{type(model).__name__} transforms its logits ({', '.join(scaled)}); spot_kernels' fused head "
                         "computes log-probs of the plain linear head only")
    if hasattr(text_config, "output_router_logits"):
        raise ValueError(f"{type(model).__name__} is a mixture-of-experts model; its router loss is not served by "
                         "spot_kernels")


@contextlib.contextmanager
def _heads_from_spot_kernels(trainer_module):
    """Within the block, the trainer module's ``add_fused_lm_head`` is the one above."""
    original = trainer_module.add_fused_lm_head
    trainer_module.add_fused_lm_head = add_fused_lm_head
    try:
        yield
    finally:
        trainer_module.add_fused_lm_head = original


def _training_args(trainer_class, args, kwargs):
    return inspect.signature(trainer_class.__init__).bind(None, *args, **kwargs).arguments.get("args")


class SpotDPOTrainer(trl.DPOTrainer):
    """``trl.DPOTrainer`` with policy and reference log-probs from ``spot_kernels`` (module docstring)."""

    def __init__(self, *args, **kwargs):
        config = _training_args(trl.DPOTrainer, args, kwargs)
        if config is not None:
            if config.use_weighting:
                raise ValueError("SpotDPOTrainer: use_weighting=True (WPO) needs log sum p^2 of every token's "
                                 "distribution, which the fused head does not compute")
            if config.fsdp:
                raise ValueError("SpotDPOTrainer: FSDP is not served (use DeepSpeed ZeRO-2/3)")
        with _heads_from_spot_kernels(dpo_trainer):
            super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """TRL's precomputation, cached apart from reference log-probs that TRL's own head computed."""
        if not str(self._precompute_model_hash).endswith("|spot_kernels"):
            self._precompute_model_hash = f"{self._precompute_model_hash}|spot_kernels"
        return super()._precompute_ref_logps(dataset, name, batch_size)


class SpotGRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with per-token log-probs and entropies (at its sampling temperature) from
    ``spot_kernels`` (module docstring)."""

    def __init__(self, *args, **kwargs):
        config = _training_args(trl.GRPOTrainer, args, kwargs)
        if config is not None:
            if config.entropy_coef != 0.0 or config.use_adaptive_entropy:
                raise ValueError("SpotGRPOTrainer: the entropy bonus (entropy_coef, use_adaptive_entropy) needs the "
                                 "gradient of the entropy, which the fused head does not compute")
            if config.fsdp:
                raise ValueError("SpotGRPOTrainer: FSDP is not served (use DeepSpeed ZeRO-2/3)")
        with _heads_from_spot_kernels(grpo_trainer):
            super().__init__(*args, **kwargs)
