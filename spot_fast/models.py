"""Loading models and tokenizers, and the built-in tiny model that needs no download.

``BUILTIN_MODEL`` names a 2-layer Qwen3-architecture model (random weights from a fixed seed) with the
byte-level BPE tokenizer bundled in ``spot_fast/assets/tokenizer``; it exists so that every command of
the project runs on a CPU-only machine with no network. Any other name is passed to Hugging Face's
``from_pretrained`` (a local path, or a hub id where the network exists).
"""
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

ASSETS = Path(__file__).parent / "assets"
BUILTIN_MODEL = "builtin:tiny-qwen3"
BUILTIN_SEED = 1234
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def tiny_qwen3_config(vocab_size):
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        tie_word_embeddings=False, rope_theta=10000.0,
    )


class ModelError(ValueError):
    """A model or tokenizer that cannot be used; the message names it and what to do."""


def check_model_name(name):
    """Raises ModelError when ``name`` is written as a path (or is not ``owner/name``) and no such
    directory exists. A hub id is left to transformers, which also finds it in the local cache
    offline (``HF_HUB_OFFLINE=1``)."""
    if name == BUILTIN_MODEL or os.path.isdir(name):
        return
    if name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise ModelError(f"model {name!r}: no such directory (and not a hub id 'owner/name')")


def _loaded(what, name, load):
    """``load()``, with transformers' errors for ``name`` turned into one line that says what to do."""
    try:
        return load()
    except (OSError, ValueError) as error:
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
        raise ModelError(f"{name!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save the tokenizer "
                         f"into it with tokenizer.save_pretrained")
    tokenizer = _loaded("the tokenizer", name, lambda: AutoTokenizer.from_pretrained(path))
    if need_chat_template and not tokenizer.chat_template:
        raise ModelError(f"the tokenizer of {name!r} has no chat template; prompts are rendered with it: add one "
                         f"(tokenizer.chat_template, saved with save_pretrained) or use an instruct model's tokenizer")
    return tokenizer


def load_model(name, dtype=torch.float32, attn_implementation=None):
    """The causal LM called ``name``; the built-in model is rebuilt identically on every call."""
    if name == BUILTIN_MODEL:
        vocab_size = len(load_tokenizer(name))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILTIN_SEED)
            model = Qwen3ForCausalLM(tiny_qwen3_config(vocab_size))
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
        return model.to(dtype)
    check_model_name(name)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return _loaded("the model", name, lambda: AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs))


def model_identity(name):
    """A string that changes whenever the weights behind ``name`` may have changed (for cache keys)."""
    if name == BUILTIN_MODEL:
        return f"{BUILTIN_MODEL}@seed{BUILTIN_SEED}"
    if os.path.isdir(name):
        files = sorted(p for p in Path(name).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        stamp = ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        return f"{os.path.abspath(name)}|{stamp}"
    return name
