"""LoRA adapters through PEFT, on the model itself (transformers' adapter integration).

``add_lora`` injects rank-``r`` adapters into the named linear layers: each gets ``W x + (alpha / r)
B A x`` with ``A`` random and ``B`` zero, so the adapted model starts equal to the base model, and
only ``A`` and ``B`` are trainable (every base weight, the LM head included, is frozen; the fused
head still passes gradients to the hidden states). ``adapters_disabled`` runs the base model
without the adapters: the reference log-probs are the base model's. With adapters loaded,
``save_pretrained`` writes the adapter alone (``adapter_config.json`` + ``adapter_model.safetensors``),
which ``peft.PeftModel.from_pretrained(base_model, path)`` loads. ``save_merged`` writes the model
with every adapter folded into its weight (``W + (alpha / r) B A``): a plain Hugging Face model that
needs no PEFT to load.
"""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

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


def merged_state_dict(model):
    """The state dict of ``model`` without adapters, each adapted weight replaced by ``W + (alpha / r) B A``
    (PEFT's ``merge``, undone afterwards: ``model`` is left as it was)."""
    from peft.tuners.lora import LoraLayer

    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    for layer in layers:
        layer.merge()
    try:
        return {name.replace(".base_layer.", "."): tensor.detach().clone()
                for name, tensor in model.state_dict().items() if "lora_" not in name}
    finally:
        for layer in layers:
            layer.unmerge()


def save_merged(model, tokenizer, path):
    """Writes ``model`` with its adapters merged as a plain Hugging Face model directory at ``path``,
    atomically (a temporary directory renamed when complete). Holds a second copy of the weights on
    the CPU while it writes."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain = type(model)(model.config)
    plain.load_state_dict({name: tensor.cpu() for name, tensor in merged_state_dict(model).items()})
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
