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


def tiny_qwen3_config(vocab_size):
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        tie_word_embeddings=False, rope_theta=10000.0,
    )


def check_model_name(name):
    """Raises FileNotFoundError unless ``name`` is the built-in model, a directory, or a hub id."""
    if name == BUILTIN_MODEL or os.path.isdir(name):
        return
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") != 1
    if looks_like_path or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"model {name!r}: no such directory (and not a hub id 'owner/name')")


def load_tokenizer(name):
    check_model_name(name)
    path = ASSETS / "tokenizer" if name == BUILTIN_MODEL else name
    return AutoTokenizer.from_pretrained(path)


def load_model(name, dtype=torch.float32, attn_implementation=None):
    """The causal LM called ``name``; the built-in model is rebuilt identically on every call."""
    if name == BUILTIN_MODEL:
        vocab_size = len(load_tokenizer(name))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILTIN_SEED)
            model = Qwen3ForCausalLM(tiny_qwen3_config(vocab_size))
        return model.to(dtype)
    check_model_name(name)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)


def model_identity(name):
    """A string that changes whenever the weights behind ``name`` may have changed (for cache keys)."""
    if name == BUILTIN_MODEL:
        return f"{BUILTIN_MODEL}@seed{BUILTIN_SEED}"
    if os.path.isdir(name):
        files = sorted(p for p in Path(name).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        stamp = ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        return f"{os.path.abspath(name)}|{stamp}"
    return name
