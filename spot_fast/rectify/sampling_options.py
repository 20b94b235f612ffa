"""The model and sampling options shared by the commands that sample (``elicit``, ``spot-fast-eval``).

Kept free of torch so that a command parses its options (and reports bad ones) before it imports a
model library; ``generation.generator_loader`` turns the parsed options into a generator.
"""
from dataclasses import asdict, dataclass

from spot_fast.cli import SEED_RANGE, number

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
    dtype), as the JSON-able dict that ``sample_settings.claim`` records beside them."""
    sampling, render = sampling_settings(args)
    return {"backend": args.backend, "dtype": args.dtype, "sampling": asdict(sampling), "render": render,
            "seeding": SEEDING}
