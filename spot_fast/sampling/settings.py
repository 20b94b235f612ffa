"""The settings that determine a model's samples: the model and sampling options of the commands that
sample (``spot-fast-rectify elicit``, ``spot-fast-eval``), and their record beside a log of samples, so
that one log never mixes samples drawn under different settings.

Options. Kept free of torch so that a command parses its options (and reports bad ones) before it
imports a model library; ``generation.generator_loader`` turns the parsed options into a generator.

Records. ``claim(settings_path, settings, log_path)`` is called before sampling into ``log_path`` (an
``AppendLog``). The log is claimed by its first sample, not by the settings file: while the log holds
no complete sample (absent, empty, or only a line cut short by a crash), the settings are (re)written,
so a run that failed before its first sample (a missing backend, a model that does not load) leaves
nothing that refuses the corrected rerun. Once the log holds samples, a run whose settings differ is
refused, naming every differing setting as recorded and as given now; a log with samples but no
recorded settings is refused too, since nothing says what drew them.
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from spot_fast.cli import SEED_RANGE, number
from spot_fast.crash_safe import write_file

BACKEND_NAMES = ("hf", "vllm")
# How samples are seeded (``generation.sample_seed``); recorded, so that samples drawn under another
# scheme (one generator seeded once per run, before this) are never resumed into the same log.
SEEDING = "per sample: sha256 of (seed, sample id)"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 0
    max_new_tokens: int = 2048
    seed: int = 0


positive_int = number(int, lambda v: v >= 1, ">= 1")


def add_sampling_arguments(parser, max_new_tokens):
    """The model and sampling options of a command that samples (read back by ``sampling_settings``
    and ``generation.generator_loader``), in their own section of ``--help``."""
    parser = parser.add_argument_group("model and sampling")
    parser.add_argument("--backend", choices=list(BACKEND_NAMES), default="hf",
                        help="hf: transformers' generate; vllm: vLLM (GPU, installed separately)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="answers per generate call")
    parser.add_argument("--temperature", type=number(float, lambda v: v > 0, "> 0"), default=Sampling.temperature,
                        help="sampling temperature")
    parser.add_argument("--top-p", type=number(float, lambda v: 0 < v <= 1, "in (0, 1]"), default=Sampling.top_p,
                        help="nucleus sampling: keep the most likely tokens up to this probability mass")
    parser.add_argument("--top-k", type=number(int, lambda v: v >= 0, ">= 0"), default=Sampling.top_k,
                        help="0: no top-k cut")
    parser.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens,
                        help="tokens generated per answer at most; a longer answer is cut and counted as truncated")
    parser.add_argument("--seed", type=number(int, *SEED_RANGE), default=Sampling.seed,
                        help="with the id of a sample (its problem and repetition), seeds that sample alone")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: bfloat16 on GPU, float32 on CPU (hf); the model's own (vllm)")
    parser.add_argument("--enable-thinking", action="store_true", help="Qwen3 thinking mode (default: off)")
    parser.add_argument("--no-chat-template", action="store_true", help="use the raw question as the prompt")


def sampling_settings(args):
    """(``Sampling``, prompt rendering options) from the options of ``add_sampling_arguments``."""
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        max_new_tokens=args.max_new_tokens, seed=args.seed)
    return sampling, {"chat_template": not args.no_chat_template, "enable_thinking": args.enable_thinking}


def recorded_settings(args):
    """Everything besides the model that determines the samples (sampling, prompt rendering, backend,
    dtype), as the JSON-able dict that ``claim`` records beside them."""
    sampling, render = sampling_settings(args)
    return {"backend": args.backend, "dtype": args.dtype, "sampling": asdict(sampling), "render": render,
            "seeding": SEEDING}


def holds_samples(log_path):
    """Whether ``log_path`` holds at least one complete, non-blank line."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return False
    complete = log_path.read_bytes().split(b"\n")[:-1]  # the part after the last newline is incomplete
    return any(line.strip() for line in complete)


def claim(settings_path, settings, log_path, directory_option):
    """Record ``settings`` (a JSON-able dict) at ``settings_path``, or raise ValueError when the samples
    already in ``log_path`` were drawn with other settings (see the module docstring); the error
    suggests another ``directory_option`` (the command's option naming the output directory)."""
    settings_path, log_path = Path(settings_path), Path(log_path)
    if not holds_samples(log_path):
        write_file(settings_path, json.dumps(settings, indent=2) + "\n")
        return
    if not settings_path.is_file():
        raise ValueError(f"{log_path} holds samples but {settings_path} does not record what drew them; "
                         f"use another {directory_option}")
    recorded = json.loads(settings_path.read_text())
    changed = sorted(key for key in recorded.keys() | settings.keys() if recorded.get(key) != settings.get(key))
    if changed:
        differences = ", ".join(f"{key}: {recorded.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
        raise ValueError(f"{log_path} holds samples drawn with other settings ({differences}); "
                         f"use another {directory_option}, or the same settings to resume")
