"""Loading models and tokenizers, and the built-in tiny model that needs no download.

``BUILTIN_MODEL`` names a 2-layer Qwen3-architecture model (random weights from a fixed seed) with the
byte-level BPE tokenizer bundled in ``spot_fast/assets/tokenizer``; it exists so that every command of
the project runs on a CPU-only machine with no network. Any other name is passed to Hugging Face's
``from_pretrained`` (a local path, or a hub id where the network exists).

Under ZeRO-3 (``load_model(..., zero3_config=...)``) a model is constructed partitioned: transformers'
DeepSpeed integration (``HfDeepSpeedConfig``) builds it inside ``deepspeed.zero.Init``, so each
parameter is split over the ranks as soon as its module is built, and ``from_pretrained`` copies the
checkpoint into the shards one module at a time (its parameters gathered, written by rank 0, partitioned
again). No
rank holds all the weights at once, before or after. transformers keeps only a weak reference to the
``HfDeepSpeedConfig``; ``_ZERO3_CONFIGS`` holds it for the life of the process, as transformers'
own Trainer does through its arguments.

With ``load_in_4bit`` (QLoRA) every linear layer of the body is loaded as bitsandbytes' 4-bit NF4
(``Linear4bit``, computing in ``dtype``); transformers leaves the LM head and the embeddings in
``dtype``, so the fused head reads the head's weight as it is. The built-in model is quantized from
its seeded weights through the same ``from_pretrained``.

transformers is imported where a model, tokenizer or configuration is built, not with this module:
the options of a run (``config.py``, which names ``BUILTIN_MODEL``) are checked before that import,
which takes seconds.
"""
import os
from pathlib import Path

import torch

from .attention import backend_of

ASSETS = Path(__file__).parent / "assets"
BUILTIN_MODEL = "builtin:tiny-qwen3"
BUILTIN_SEED = 1234
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def tiny_qwen3_config(vocab_size):
    from transformers import Qwen3Config
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        tie_word_embeddings=False, rope_theta=10000.0,
    )


class ModelError(ValueError):
    """A model or tokenizer that cannot be used; the message names it and what to do."""


def is_hub_id(name):
    """Whether ``name`` is left to the hub: not the built-in model nor a directory, and written ``owner/name``."""
    return (name != BUILTIN_MODEL and not os.path.isdir(name) and not name.startswith(("/", ".", "~"))
            and name.count("/") == 1)


def check_model_name(name):
    """Raises ModelError when ``name`` is written as a path (or is not ``owner/name``) and no such
    directory exists. A hub id is left to transformers, which also finds it in the local cache
    offline (``HF_HUB_OFFLINE=1``)."""
    if name == BUILTIN_MODEL or os.path.isdir(name):
        return
    if not is_hub_id(name):
        raise ModelError(f"model {name!r}: no such directory (and not a hub id 'owner/name')")


def is_run_folder(path):
    """Whether ``path`` is the output directory of a training run: it holds the run's ``final`` model or a
    ``checkpoint-<step>`` (a model is in those, not beside them)."""
    path = Path(path)
    return (path / "final").is_dir() or any(p.is_dir() and p.name.split("-", 1)[1].isdigit()
                                            for p in path.glob("checkpoint-*"))


def run_folder_error(name):
    final = os.path.join(name, "final")
    use = f"use {final} (or one of its checkpoint-<step> folders)" if os.path.isdir(final) else \
        "use one of its checkpoint-<step> folders"
    return ModelError(f"{name!r} is a training run folder, not a model: {use}, or evaluate them all with "
                      f"spot-fast-eval --checkpoints {name}")


def _loaded(what, name, load):
    """``load()``, with transformers' errors for ``name`` turned into one line that says what to do."""
    try:
        return load()
    except (OSError, ValueError) as error:
        if os.path.isdir(name) and is_run_folder(name):
            raise run_folder_error(name) from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "the directory" if os.path.isdir(name) else "the local Hugging Face cache or the hub"
        raise ModelError(f"{what} of {name!r} could not be loaded from {where}: {first_line}") from None


def load_tokenizer(name, need_chat_template=True):
    """The tokenizer of model ``name``; with ``need_chat_template``, one that has a chat template
    (training and scoring render prompts with it)."""
    check_model_name(name)
    path = ASSETS / "tokenizer" if name == BUILTIN_MODEL else name
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        # transformers would build an empty tokenizer from config.json alone
        if is_run_folder(path):
            raise run_folder_error(name)
        raise ModelError(f"{name!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save the tokenizer "
                         f"into it with tokenizer.save_pretrained")
    from transformers import AutoTokenizer
    tokenizer = _loaded("the tokenizer", name, lambda: AutoTokenizer.from_pretrained(path))
    if need_chat_template and not tokenizer.chat_template:
        raise ModelError(f"the tokenizer of {name!r} has no chat template; prompts are rendered with it: add one "
                         f"(tokenizer.chat_template, saved with save_pretrained) or use an instruct model's tokenizer")
    return tokenizer


_ZERO3_CONFIGS = []


def four_bit_config(dtype):
    """QLoRA's quantization: NF4 weights in blocks of 64, computing in ``dtype``."""
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def load_model(name, dtype=torch.float32, attn_implementation=None, zero3_config=None, load_in_4bit=False):
    """The causal LM called ``name``; the built-in model is rebuilt identically on every call.
    With ``zero3_config`` (the run's DeepSpeed configuration, ZeRO stage 3; every rank must call
    this together) the model is partitioned over the ranks from construction on; with
    ``load_in_4bit`` its body's linear layers are 4-bit (module docstring)."""
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM
    if zero3_config is not None:
        from transformers.integrations import HfDeepSpeedConfig
        _ZERO3_CONFIGS.append(HfDeepSpeedConfig(zero3_config))  # before the model is built
    attention = backend_of(attn_implementation)
    if attention is not None:
        attention.register()
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if load_in_4bit:
        kwargs["quantization_config"] = four_bit_config(dtype)
    if name == BUILTIN_MODEL and load_in_4bit:
        config = tiny_qwen3_config(len(load_tokenizer(BUILTIN_MODEL)))
        model = Qwen3ForCausalLM.from_pretrained(None, config=config, state_dict=_builtin_model(dtype, False).state_dict(),
                                                 dtype=dtype, **kwargs)
    elif name == BUILTIN_MODEL:
        model = _builtin_model(dtype, partitioned=zero3_config is not None)
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
    else:
        check_model_name(name)
        model = _loaded("the model", name, lambda: AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs))
    if attention is not None and (why := attention.refused_by_model(model)):
        raise ModelError(f"{name}: {why} (--attention {attention.name}); use --attention sdpa")
    if load_in_4bit:
        _check_4bit_rows(model, name)
        _same_4bit_path_for_scoring(model)
    return model


def _same_4bit_path_for_scoring(model):
    """On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` repacks its weight the first time it
    runs in eval mode without gradients and from then on computes in bf16, whatever the compute
    dtype: scoring (the reference) and training would compute different functions (measured: first-step
    rewards of up to 1.6e-4 instead of 0 under ZeRO 0-1; under ZeRO-2 an adapter got no gradient and the
    engine's gradient hook stopped the run). Every layer is kept on the path training takes
    (dequantize, then a matmul in the compute dtype)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _check_4bit_rows(model, name):
    """ModelError for a 4-bit layer on the CPU whose rows are not a multiple of the 64-element
    quantization block: bitsandbytes 0.50.2's CPU dequantization scales them with the wrong block's
    absmax (measured on 64 x 48 and 128 x 96 weights)."""
    for layer_name, module in model.named_modules():
        quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
        if quant_state is not None and module.weight.device.type == "cpu" and quant_state.shape[-1] % quant_state.blocksize:
            raise ModelError(f"{name}: layer {layer_name} has rows of {quant_state.shape[-1]} elements, not a multiple of "
                             f"{quant_state.blocksize}; bitsandbytes' CPU 4-bit dequantization is wrong for them")


def _builtin_model(dtype, partitioned):
    """The tiny model from ``BUILTIN_SEED``. Partitioned: built inside ``zero.Init`` (through
    transformers' ``_from_config``), then each parameter gathered in turn and given rank 0's values
    of the seeded model, so that it equals the unpartitioned model exactly (the seeded values come
    from a full copy on rank 0: this model is a few megabytes)."""
    from transformers import Qwen3ForCausalLM
    vocab_size = len(load_tokenizer(BUILTIN_MODEL))

    def seeded():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILTIN_SEED)
            return Qwen3ForCausalLM(tiny_qwen3_config(vocab_size)).to(dtype)

    if not partitioned:
        return seeded()
    import deepspeed
    import torch.distributed as dist

    model = Qwen3ForCausalLM._from_config(tiny_qwen3_config(vocab_size), dtype=dtype)
    values = seeded().state_dict() if dist.get_rank() == 0 else None
    for name, parameter in model.named_parameters():
        with deepspeed.zero.GatheredParameters([parameter], modifier_rank=0):
            if values is not None:
                parameter.data.copy_(values[name])
    return model


def pretrained_config(name):
    """The transformers configuration of model ``name`` (no weights are read)."""
    if name == BUILTIN_MODEL:
        return tiny_qwen3_config(len(load_tokenizer(BUILTIN_MODEL)))
    check_model_name(name)
    from transformers import AutoConfig
    return _loaded("the configuration", name, lambda: AutoConfig.from_pretrained(name))


def hidden_size(name):
    return pretrained_config(name).hidden_size


def model_identity(name, load_in_4bit=False):
    """A string that changes whenever the weights behind ``name`` may have changed (for cache keys);
    a 4-bit load of the same weights is another model."""
    if load_in_4bit:
        return f"{model_identity(name)}|4-bit nf4"
    if name == BUILTIN_MODEL:
        return f"{BUILTIN_MODEL}@seed{BUILTIN_SEED}"
    if os.path.isdir(name):
        files = sorted(p for p in Path(name).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        stamp = ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        return f"{os.path.abspath(name)}|{stamp}"
    return name
