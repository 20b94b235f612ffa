"""Training configuration: plain values, from flags and/or a YAML file (flags win).

Defaults reproduce the SPoT recipe (docs/design.md section 1): spot_bco, beta 0.1, lr 1e-6 cosine with 5%
warmup, 2 epochs, weight decay 0.01, Adam betas (0.9, 0.95), grad clip 1.0, global batch 32, max
length 8192, ZeRO-2, bf16 and gradient checkpointing on GPU. With no ``--model`` and ``--data`` the
run is the built-in demo (tiny model, bundled pairs); the recipe's learning rate does not move a
randomly initialized 2-layer model, so the demo uses ``DEMO_LEARNING_RATE`` unless one is given. The
bundled pairs are the default for the built-in model only: any other model needs ``--data``.
``validate`` resolves these model-dependent defaults, so a config always holds the values the run
uses (and a checkpoint stores them).
The PEAR options default to ``spot_kernels.PearConfig()`` (this library's choice; see spot_kernels/pear.py).

Every option is validated once, from the flags and the YAML alike, before anything is loaded or
written: its type (YAML numbers such as ``1e-6``, which YAML reads as a string, are converted), its
choices and its range (``RANGES``; a float must be finite); an error names the option and, for a YAML
value, the file. The flags are parsed by ``cli.ArgumentParser`` (no abbreviations, one-line errors).
``parse_config`` then checks what the options need from the machine (``preflight``: packages, CUDA,
the hub), still before the heavy imports (this module does not import transformers).
``RESUME_SAFE`` lists the options a resumed run may change; any other change is refused
(``changed_on_resume``).
"""
import argparse
import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from spot_kernels import BACKENDS, PEAR_LEVELS, PearConfig

from .cli import SEED_RANGE, ArgumentParser
from .activation_checkpointing import MODES as CHECKPOINTING_MODES
from .attention import ATTENTION_BACKENDS
from .crash_safe import write_file
from .data import RENDER_MODES, TRUNCATION_MODES, TokenLayout
from .models import ASSETS, BUILTIN_MODEL
from .objective import OBJECTIVES, Objective
from .paths import file_problem
from .preflight import RequirementError, check_environment

RECIPE_LEARNING_RATE = 1e-6
DEMO_LEARNING_RATE = 1e-2
# the built-in model: a global batch of 4 pairs for 6 epochs, so that the loss visibly falls in the demo
DEMO_GRAD_ACCUM = 1
DEMO_EPOCHS = 6
PEAR_DEFAULTS = PearConfig()


@dataclass
class TrainConfig:
    model: str = field(default=BUILTIN_MODEL, metadata={"help": "local path or hub id; default: the built-in tiny model"})
    data: str = field(default=str(ASSETS / "pairs.jsonl"), metadata={
        "help": "training pairs: a JSONL, parquet, arrow or JSON file, a datasets save_to_disk folder, a folder of "
                "data files, or a hub dataset id owner/name (datasets.load_dataset); SPoT's or TRL's fields",
        "default_help": "the bundled demo pairs, with the built-in model only"})
    data_split: str = field(default="train", metadata={"help": "the split of --data, where it has splits (a hub dataset, a folder)"})
    data_config: str = field(default="", metadata={"help": "the configuration (subset) of a hub dataset, for --data and --eval-data"})
    eval_data: str = field(default="", metadata={"help": "held-out pairs, in any form --data takes; evaluated every --eval-every steps and at the end"})
    eval_data_split: str = field(default="test", metadata={"help": "the split of --eval-data, where it has splits"})
    eval_every: int = field(default=0, metadata={"help": "optimizer steps between evaluations on --eval-data (0: only at the end)"})
    output_dir: str = field(default="outputs/spot", metadata={"help": "checkpoints, metrics, plots"})
    cache_dir: str = field(default="", metadata={"help": "cached reference / behaviour / retain log-probs; empty: OUTPUT_DIR/../.logprob_cache"})
    loss: str = field(default="spot_bco", metadata={"help": "objective", "choices": tuple(OBJECTIVES)})
    beta: float = field(default=0.1, metadata={"help": "reward scale: r = beta * (log pi(y|x) - log pi_ref(y|x))"})
    delta_mode: str = field(default="cumulative", metadata={"choices": ("cumulative", "ema"), "help": "spot_bco reward shift"})
    delta_decay: float = field(default=0.99, metadata={"help": "ema decay of the reward shift"})
    learning_rate: float = field(default=RECIPE_LEARNING_RATE, metadata={
        "help": "peak learning rate", "default_help": "1e-6, or 1e-2 for the built-in model"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of the steps spent warming the learning rate up (ceil(ratio x steps)), then cosine to 0"})
    epochs: int = field(default=2, metadata={"help": "passes over the training pairs", "default_help": f"2, or {DEMO_EPOCHS} for the built-in model"})
    per_device_batch: int = field(default=4, metadata={"help": "pairs per micro-batch on each process (global batch: per_device_batch x grad_accum x processes)"})
    grad_accum: int = field(default=8, metadata={"help": "micro-batches whose gradients are summed into one optimizer step", "default_help": f"8 (global batch 32 on one process), or {DEMO_GRAD_ACCUM} for the built-in model"})
    max_length: int = field(default=8192, metadata={"help": "tokens of prompt + answer at most; answers are truncated, a pair whose prompt alone is longer is skipped"})
    render: str = field(default="spot-fast", metadata={"choices": RENDER_MODES, "help": "token layout: spot-fast, or trl020 (the SPoT release's: TRL 0.20 DPOTrainer's)"})
    max_prompt_length: int = field(default=0, metadata={"help": "--render trl020: prompts keep their last N tokens (0: max_length // 2, the SPoT release's setting)"})
    truncation_mode: str = field(default="keep_end", metadata={"choices": TRUNCATION_MODES, "help": "--render trl020: a sequence longer than max_length keeps its last (keep_end) or first (keep_start) tokens"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0: no clipping)"})
    bf16: str = field(default="auto", metadata={"choices": ("auto", "on", "off"), "help": "auto: on with CUDA"})
    gradient_checkpointing: str = field(default="auto", metadata={"choices": CHECKPOINTING_MODES, "help": "what each layer's backward recomputes: on: its whole forward (least memory); selective: the cheap ops only, matmul and attention outputs kept; selective-half: also every second matmul; off: nothing (most memory); auto: on with CUDA"})
    liger: str = field(default="auto", metadata={"choices": ("auto", "on", "off"), "help": "Liger kernels for the model body; auto: on with CUDA where liger-kernel is installed and supports the model"})
    pack: str = field(default="on", metadata={"choices": ("on", "off"), "help": "pack sequences without padding"})
    share_prefix: str = field(default="on", metadata={"choices": ("on", "off"), "help": "forward each pair as a tree: prompt and common answer prefix once"})
    attention: str = field(default="auto", metadata={"choices": ("auto", *ATTENTION_BACKENDS), "help": "attention over pair trees: sdpa (a dense mask, any device), flex (FlexAttention block masks, CUDA) or varlen (FlashAttention varlen over the trees' segments, no mask; CUDA, and on the CPU an exact per-segment SDPA stand-in); auto: varlen on CUDA once its self-check on the GPU passes, else sdpa"})
    max_tokens_per_batch: int = field(default=0, metadata={"help": "form micro-batches of whole pairs up to this many tokens (0: per_device_batch pairs each)"})
    pear_level: str = field(default=PEAR_DEFAULTS.level, metadata={"choices": PEAR_LEVELS, "help": "PEAR importance weights per token, block or sequence"})
    pear_clip_low: float = field(default=PEAR_DEFAULTS.clip_low, metadata={"help": "PEAR: each log-ratio is clipped to [-clip_low, clip_high]"})
    pear_clip_high: float = field(default=PEAR_DEFAULTS.clip_high, metadata={"help": "PEAR: upper clip of each log-ratio"})
    pear_weight_min: float = field(default=PEAR_DEFAULTS.weight_min, metadata={"help": "PEAR: each weight is clipped to [weight_min, weight_max]"})
    pear_weight_max: float = field(default=PEAR_DEFAULTS.weight_max, metadata={"help": "PEAR: upper clip of each weight"})
    pear_gamma: float = field(default=PEAR_DEFAULTS.gamma, metadata={"help": "PEAR: discount per token to the end (token, block)"})
    pear_block_size: int = field(default=PEAR_DEFAULTS.block_size, metadata={"help": "PEAR: tokens per block (block level)"})
    behavior_model: str = field(default="", metadata={"help": "PEAR behaviour policy (default: the starting policy), unless the data has behavior_logps"})
    retain_data: str = field(default="", metadata={"help": "prompt + response JSONL; logs retain NLL and KL to the start (forgetting)"})
    retain_every: int = field(default=10, metadata={"help": "optimizer steps between retain-set measurements"})
    kernel_backend: str = field(default="auto", metadata={"choices": BACKENDS, "help": "fused LM-head log-prob kernel: triton (CUDA), chunked (PyTorch, any device), eager (materializes the logits; reference only); auto: triton on CUDA, else chunked"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank: train low-rank adapters (PEFT) on a frozen model; 0: train every weight"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator: adapters add (alpha / r) * B A x"})
    lora_targets: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                              metadata={"help": "comma-separated names of the linear layers that get adapters"})
    lora_save_merged: bool = field(default=False, metadata={"help": "also save the final model with its adapters merged (OUTPUT_DIR/final-merged)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: the base model's linear layers in 4-bit NF4 (bitsandbytes), the LM head unquantized; needs --lora-r"})
    zero_stage: int = field(default=2, metadata={"choices": (0, 1, 2, 3), "help": "DeepSpeed ZeRO stage: 0 none, 1 optimizer state, 2 and gradients, 3 and weights partitioned over the processes"})
    offload: str = field(default="none", metadata={"choices": ("none", "optimizer", "params"),
                                                   "help": "keep in CPU memory: the optimizer state (ZeRO >= 1), or that and the weights (ZeRO-3)"})
    seed: int = field(default=42, metadata={"help": "seeds the data order, dropout and LoRA initialisation"})
    save_every: int = field(default=0, metadata={"help": "optimizer steps between checkpoints (0: only at the end)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoint-<step> folders kept (0: all)"})
    save_optimizer_in_final: bool = field(default=False, metadata={
        "help": "also keep the optimizer state (DeepSpeed's engine state: ~12 bytes per trained parameter, ~100 GB "
                "at 8B) in OUTPUT_DIR/final, so that a larger --max-steps can train on from it; otherwise it is "
                "only in checkpoint-<step>/ and final/ holds the model"})
    resume: str = field(default="", metadata={"help": "checkpoint directory, or 'latest' in OUTPUT_DIR: the saved state "
                                                      "with the most steps (a finished run's final/ included)"})
    overwrite: bool = field(default=False, metadata={"help": "start afresh in an OUTPUT_DIR that holds another run's results, deleting them"})
    log_every: int = field(default=1, metadata={"help": "optimizer steps between rows of metrics.jsonl (and TensorBoard / W&B)"})
    report_to: str = field(default="auto", metadata={"choices": ("auto", "none", "tensorboard", "wandb"),
                                                     "help": "where metrics go besides metrics.jsonl; auto: TensorBoard if installed"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: all epochs)"})
    sync_debug: str = field(default="off", metadata={"choices": ("off", "warn"),
                                                     "help": "warn (CUDA): count every host synchronisation in the training loop by call site, into OUTPUT_DIR/host_syncs.json"})

    @property
    def needs_rejected(self):
        return Objective(self.loss).needs_rejected

    @property
    def needs_reference(self):
        return Objective(self.loss).needs_reference

    @property
    def needs_behavior(self):
        return Objective(self.loss).needs_behavior

    def pear(self):
        return PearConfig(self.pear_level, self.pear_clip_low, self.pear_clip_high, self.pear_weight_min,
                          self.pear_weight_max, self.pear_gamma, self.pear_block_size)

    def token_layout(self):
        """The token layout; ``trl020`` without ``max_prompt_length`` keeps the last ``max_length // 2``
        prompt tokens, as the SPoT release ran (its script sets TRL's max_prompt_length so)."""
        max_prompt_length = self.max_prompt_length or (self.max_length // 2 if self.render == "trl020" else 0)
        return TokenLayout(self.render, max_prompt_length, self.truncation_mode)


# option -> (the test a value must pass, what it must be); options not listed take any value of their type
RANGES = {
    "beta": (lambda v: v > 0, "> 0"),
    "delta_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "warmup_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "per_device_batch": (lambda v: v >= 1, ">= 1"),
    "grad_accum": (lambda v: v >= 1, ">= 1"),
    "max_length": (lambda v: 2 <= v <= 2**24, "in [2, 2**24]"),  # 16M tokens: beyond any model's context
    "max_prompt_length": (lambda v: v >= 0, ">= 0 (0: max_length // 2)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "pear_block_size": (lambda v: v >= 1, ">= 1"),
    "retain_every": (lambda v: v >= 1, ">= 1"),
    "eval_every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "seed": SEED_RANGE,
    "save_every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "keep_last": (lambda v: v >= 0, ">= 0 (0: keep all)"),
    "log_every": (lambda v: v >= 1, ">= 1"),
    "max_steps": (lambda v: v >= 0, ">= 0 (0: all epochs)"),
    "max_tokens_per_batch": (lambda v: v >= 0, ">= 0 (0: per_device_batch pairs per micro-batch)"),
    "lora_r": (lambda v: v >= 0, ">= 0 (0: no LoRA)"),
    "lora_alpha": (lambda v: v > 0, "> 0"),
    "lora_targets": (lambda v: all(name.strip() for name in v.split(",")), "comma-separated layer names"),
}

# Options a resumed run may change: they decide where results go, how often they are written or
# measured, and how long the run goes on (a new max_steps also stretches or shortens the cosine).
# Every other option changes what the run computes, and a resume that changes it is refused.
RESUME_SAFE = ("output_dir", "cache_dir", "resume", "overwrite", "log_every", "save_every", "keep_last", "max_steps",
               "retain_data", "retain_every", "eval_data", "eval_data_split", "eval_every", "gradient_checkpointing", "report_to", "lora_save_merged", "sync_debug",
               "save_optimizer_in_final")


def changed_on_resume(saved, config):
    """``[(option, saved value, value now)]`` for the options outside ``RESUME_SAFE`` that differ. An
    option the checkpoint does not name (saved before the option existed) counts as its default."""
    now = dataclasses.asdict(config)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    saved = {name: saved.get(name, defaults[name]) for name in now}
    if saved["learning_rate"] == 0.0:  # written when 0.0 stood for the model's default rate (2e-3 for the built-in)
        saved["learning_rate"] = 2e-3 if saved["model"] == BUILTIN_MODEL else RECIPE_LEARNING_RATE
    return [(name, saved[name], now[name]) for name in now if name not in RESUME_SAFE and saved[name] != now[name]]


class ConfigError(ValueError):
    """An option with a bad value; the message names the option (and the YAML file it came from)."""


def default_learning_rate(model):
    return DEMO_LEARNING_RATE if model == BUILTIN_MODEL else RECIPE_LEARNING_RATE


def _typed(f, value, option):
    """``value`` as the type of option ``f``, or ConfigError."""
    kind = type(f.default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{option}: expected {kind.__name__}, got {value!r}")


def validate(values, sources):
    """A ``TrainConfig`` from ``values`` (option -> value), each checked for type, choices and range;
    ``sources`` names where each value came from (a YAML file) for the error messages."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    checked = {}
    for name, value in values.items():
        option = f"{sources[name]}: option {name}" if name in sources else "--" + name.replace("_", "-")
        value = checked[name] = _typed(fields[name], value, option)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{option} must be a finite number; got {value!r}")
        choices = fields[name].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{option}: {value!r} is not one of {list(choices)}")
        if name in RANGES and not RANGES[name][0](value):
            raise ConfigError(f"{option} must be {RANGES[name][1]}; got {value!r}")
    model = checked.get("model", BUILTIN_MODEL)
    if model != BUILTIN_MODEL and "data" not in checked:
        raise ConfigError(f"--model {model} needs --data: the bundled demo pairs are the default for the built-in "
                          f"model only")
    checked.setdefault("learning_rate", default_learning_rate(model))
    if model == BUILTIN_MODEL:  # the demo: small steps, several epochs (the recipe's are for real models)
        checked.setdefault("grad_accum", DEMO_GRAD_ACCUM)
        checked.setdefault("epochs", DEMO_EPOCHS)
    config = TrainConfig(**checked)
    if config.eval_every and not config.eval_data:
        raise ConfigError("--eval-every needs --eval-data: the held-out pairs to evaluate")
    if config.lora_save_merged and not config.lora_r:
        raise ConfigError("--lora-save-merged needs LoRA adapters (--lora-r)")
    if config.load_in_4bit:
        check_four_bit(config)
    if config.offload == "params" and config.zero_stage != 3:
        raise ConfigError(f"--offload params needs --zero-stage 3 (ZeRO-3 partitions the weights); got --zero-stage {config.zero_stage}")
    if config.offload == "optimizer" and config.zero_stage == 0:
        raise ConfigError("--offload optimizer needs --zero-stage 1, 2 or 3 (ZeRO partitions the optimizer state)")
    try:
        config.pear()
    except ValueError as error:
        raise ConfigError(f"PEAR options: {error}") from None
    try:
        config.token_layout()
    except ValueError as error:
        raise ConfigError(f"token layout options: {error}") from None
    return config


def bitsandbytes_installed():
    return importlib.util.find_spec("bitsandbytes") is not None


def check_four_bit(config):
    """ConfigError unless ``--load-in-4bit`` can run with the other options."""
    if not config.lora_r:
        raise ConfigError("--load-in-4bit needs --lora-r: 4-bit weights do not train; adapters on them do (QLoRA)")
    if config.lora_save_merged:
        raise ConfigError("--lora-save-merged with --load-in-4bit: the merged weights would have to be quantized again; "
                          "merge the saved adapter into the full-precision base instead (PEFT's merge_and_unload)")
    if not bitsandbytes_installed():
        raise ConfigError("--load-in-4bit needs bitsandbytes, which is not installed (pip install bitsandbytes)")


# --help's sections, in order; an option of TrainConfig listed in none lands in "other options"
HELP_GROUPS = {
    "data and model": ("model", "data", "data_split", "data_config", "eval_data", "eval_data_split", "max_length",
                       "render", "max_prompt_length", "truncation_mode", "output_dir", "cache_dir"),
    "objective": ("loss", "beta", "delta_mode", "delta_decay"),
    "optimisation": ("learning_rate", "warmup_ratio", "epochs", "max_steps", "per_device_batch", "grad_accum",
                     "weight_decay", "adam_beta1", "adam_beta2", "grad_clip", "seed"),
    "memory, speed and parallelism": ("zero_stage", "offload", "bf16", "gradient_checkpointing", "liger", "attention",
                                      "kernel_backend", "pack", "share_prefix", "max_tokens_per_batch", "sync_debug"),
    "PEAR": ("pear_level", "pear_clip_low", "pear_clip_high", "pear_weight_min", "pear_weight_max", "pear_gamma",
             "pear_block_size", "behavior_model"),
    "LoRA": ("lora_r", "lora_alpha", "lora_targets", "lora_save_merged", "load_in_4bit"),
    "checkpoints and logging": ("save_every", "keep_last", "save_optimizer_in_final", "resume", "overwrite",
                                "log_every", "eval_every", "report_to", "retain_data", "retain_every"),
}
EXAMPLES = """examples:
  .venv/bin/python spot_fast/train.py --overwrite       # the demo: built-in tiny model, bundled pairs, CPU is fine
  .venv/bin/python spot_fast/train.py --model Qwen/Qwen3-8B --data pairs.jsonl --output-dir runs/spot
  .venv/bin/python -m torch.distributed.run --nproc_per_node=8 spot_fast/train.py --model Qwen/Qwen3-8B \\
      --data pairs.jsonl --per-device-batch 1 --grad-accum 4        # 8 GPUs, global batch 32
  .venv/bin/python spot_fast/train.py --config my_run.yaml --learning-rate 2e-6   # flags override the YAML
  .venv/bin/python spot_fast/train.py --output-dir runs/spot --resume latest      # go on after an interrupt"""


def build_parser():
    """The trainer's parser: every option of ``TrainConfig`` in its ``HELP_GROUPS`` section, with its help
    and default (``default_help`` where the default depends on other options). argparse's defaults are
    None, so that a YAML value is overridden only by a flag that was given."""
    parser = ArgumentParser(prog="spot_fast/train.py", description="Train a causal LM with SPoT and its baselines.",
                            epilog=EXAMPLES)
    parser.add_argument("--config", help="YAML file of options (keys as below, with underscores); flags override it")
    group_of = {name: title for title, names in HELP_GROUPS.items() for name in names}
    groups = {title: parser.add_argument_group(title) for title in (*HELP_GROUPS, "other options")}
    for f in dataclasses.fields(TrainConfig):
        help_text = f.metadata.get("help", "")
        default = f.metadata.get("default_help", "none" if f.default == "" else str(f.default))
        kwargs = {"help": f"{help_text} (default: {default})".lstrip(), "default": None}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = type(f.default)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        groups[group_of.get(f.name, "other options")].add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return parser


CONFIG_FILE = "config.yaml"  # the run's effective configuration, in its output directory


def write_config(config, output_dir):
    """OUTPUT_DIR/config.yaml: every option of ``config`` as the run uses it (defaults and the
    model-dependent learning rate resolved, as ``validate`` resolves them), loadable with ``--config``
    to run the same again. Written crash-safe (``crash_safe.write_file``). Returns its path."""
    path = Path(output_dir) / CONFIG_FILE
    text = ("# the effective configuration of this run: python spot_fast/train.py --config " + str(path) + "\n"
            + yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True))
    write_file(path, text)
    return path


def parse_config(argv=None):
    """TrainConfig from defaults < YAML (``--config``) < flags, validated, and what it needs from the
    machine checked (``preflight.check_environment``); a bad value or a missing requirement exits with
    one line naming the option (and the file)."""
    args = build_parser().parse_args(argv)
    values, sources = {}, {}
    if args.config:
        path = Path(args.config)
        problem = file_problem(path)
        if problem:
            raise SystemExit(f"error: --config {path}: {problem}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise SystemExit(f"error: {path}: not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"error: {path}: expected a mapping of option: value, got {type(loaded).__name__}")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise SystemExit(f"error: {path}: unknown option(s) {unknown}")
        values.update(loaded)
        sources.update({name: str(path) for name in loaded})
    flags = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    values.update(flags)
    for name in flags:
        sources.pop(name, None)
    try:
        config = validate(values, sources)
        check_environment(config)
    except (ConfigError, RequirementError) as error:
        raise SystemExit(f"error: {error}") from None
    return config
