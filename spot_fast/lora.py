"""LoRA adapters through PEFT, on the model itself (transformers' adapter integration).

``add_lora`` injects rank-``r`` adapters into the named linear layers: each gets ``W x + (alpha / r)
B A x`` with ``A`` random and ``B`` zero, so the adapted model starts equal to the base model, and
only ``A`` and ``B`` are trainable (every base weight, the LM head included, is frozen; the fused
head still passes gradients to the hidden states). ``adapters_disabled`` runs the base model
without the adapters: the reference log-probs are the base model's. With adapters loaded,
``save_pretrained`` writes the adapter alone (``adapter_config.json`` + ``adapter_model.safetensors``),
which ``peft.PeftModel.from_pretrained(base_model, path)`` loads.
"""
from contextlib import contextmanager

from .config import ConfigError


def add_lora(model, r, alpha, targets):
    """Adds trainable LoRA adapters to the layers named in ``targets`` (comma-separated) of ``model``."""
    from peft import LoraConfig

    names = [name.strip() for name in targets.split(",")]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [name for name in names if name not in present]
    if missing:
        raise ConfigError(f"--lora-targets: the model has no layer named {', '.join(missing)} "
                         f"(its linear layers: {', '.join(sorted(linear_layer_names(model)))})")
    model.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=names, lora_dropout=0.0, bias="none"))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return model


def linear_layer_names(model):
    import torch
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def has_adapters(model):
    return getattr(model, "_hf_peft_config_loaded", False)


@contextmanager
def adapters_disabled(model):
    """The base model within the block (a model without adapters is left as it is)."""
    if not has_adapters(model):
        yield
        return
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()
