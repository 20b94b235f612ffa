"""LoRA adapters through PEFT, on the model itself (transformers' adapter integration).

``add_lora`` injects rank-``r`` adapters into the named linear layers: each gets ``W x + (alpha / r)
B A x`` with ``A`` random (drawn from the run's seed alone, so every rank and every ZeRO stage starts
from the same adapters) and ``B`` zero, so the adapted model starts equal to the base model, and
only ``A`` and ``B`` are trainable (every base weight, the LM head included, is frozen; the fused
head still passes gradients to the hidden states). ``adapters_disabled`` runs the base model
without the adapters: the reference log-probs are the base model's. With adapters loaded,
``save_pretrained`` writes the adapter alone (``adapter_config.json`` + ``adapter_model.safetensors``),
which ``peft.PeftModel.from_pretrained(base_model, path)`` loads. ``save_merged`` writes the model
with every adapter folded into its weight (``W + (alpha / r) B A``, PEFT's ``get_delta_weight``; the
model itself is never changed): a plain Hugging Face model that needs no PEFT to load.

Under ZeRO-3 the base model is partitioned by ``zero.Init`` when it is built; the adapters are added
afterwards as ordinary full tensors (PEFT reads only the base layers' ``in_features`` and
``out_features``, which partitioning leaves alone), and the DeepSpeed engine converts every parameter
that is not yet partitioned when it starts (``_convert_to_zero_parameters``: rank 0's values are
broadcast, then split). Whatever reads weights outside a forward gathers them: ``adapters_gathered``
the adapters alone, ``merged_state_dict`` one adapted layer or one parameter at a time.
"""
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .config import ConfigError
from .crash_safe import replaced_dir


def add_lora(model, r, alpha, targets, seed):
    """Adds trainable LoRA adapters to the layers named in ``targets`` (comma-separated) of ``model``;
    their random half is drawn from ``seed`` (the global RNG is left as it was)."""
    from peft import LoraConfig

    names = [name.strip() for name in targets.split(",")]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [name for name in names if name not in present]
    if missing:
        raise ConfigError(f"--lora-targets: the model has no layer named {', '.join(missing)} "
                         f"(its linear layers: {', '.join(sorted(linear_layer_names(model)))})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=names, lora_dropout=0.0, bias="none"))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return model


def linear_layer_names(model):
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


def is_partitioned(model):
    """Whether ZeRO-3 partitions the parameters of ``model``."""
    return any(hasattr(parameter, "ds_id") for parameter in model.parameters())


def gathered(parameters, partitioned):
    """The full values of ``parameters`` within the block (every rank must enter it together when
    ``partitioned``); read-only: what the block writes into them is dropped."""
    import deepspeed
    return deepspeed.zero.GatheredParameters(list(parameters), enabled=partitioned)


def parameter_count(parameters):
    """Elements in ``parameters``, counting a ZeRO-3 partitioned one whole (``ds_numel``) and a 4-bit
    one by the weights it packs (two to a byte; its ``quant_state`` knows their shape)."""
    def count(p):
        quant_state = getattr(p, "quant_state", None)
        return quant_state.shape.numel() if quant_state is not None else getattr(p, "ds_numel", p.numel())
    return sum(count(p) for p in parameters)


def _is_main():
    return not dist.is_initialized() or dist.get_rank() == 0


def adapters_gathered(model):
    """The adapters of ``model`` whole within the block (under ZeRO-3 every rank must enter it together;
    elsewhere, and without adapters, nothing happens)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return gathered(trainable, has_adapters(model) and is_partitioned(model))


def merged_state_dict(model):
    """The state dict of ``model`` without adapters, each adapted weight replaced by ``W + (alpha / r)
    B A`` (the sum of PEFT's ``get_delta_weight`` over the active adapters), as CPU copies. Under
    ZeRO-3 (every rank must call it) one adapted layer or one other parameter is gathered at a time,
    and ranks other than 0 get None."""
    from peft.tuners.lora import LoraLayer

    partitioned, main = is_partitioned(model), _is_main()
    merged = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            with gathered(layer.parameters(), partitioned):
                weight = layer.base_layer.weight.detach().clone()
                for adapter in layer.active_adapters:
                    weight += layer.get_delta_weight(adapter)
                merged[f"{name}.base_layer.weight"] = weight.cpu() if main else None
    result = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if "lora_" in name:
            continue
        if name not in merged:
            with gathered([tensor], partitioned and hasattr(tensor, "ds_id")):
                merged[name] = tensor.detach().cpu().clone() if main else None
        result[name.replace(".base_layer.", ".")] = merged[name]
    return result if main else None


def save_merged(model, tokenizer, path):
    """Writes ``model`` with its adapters merged as a plain Hugging Face model directory at ``path``,
    atomically (a temporary directory renamed when complete). Every rank must call it (under ZeRO-3
    they gather the weights together); rank 0 writes, holding a second copy of the weights in CPU
    memory while it does."""
    weights = merged_state_dict(model)
    if not _is_main():
        return
    plain = type(model)(model.config)
    plain.load_state_dict(weights)
    with replaced_dir(path) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
