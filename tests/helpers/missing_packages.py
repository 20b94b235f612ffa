"""Runs the trainer's ``main`` with packages made missing, run by test_startup.py:

    python tests/helpers/missing_packages.py OUT.json

A package is made missing the way Python sees an absent one: ``sys.modules[name] = None`` makes
``import name`` raise ModuleNotFoundError and ``importlib.util.find_spec(name)`` return None. Each case
(name -> modules made missing, trainer flags, environment) records what ``main`` exited with, whether
its output directory exists, and which heavy modules had been imported by then. The cases of
``WITHOUT_CUDA`` run as on a machine without CUDA (``preflight.cuda_available`` answers False, and
TRITON_INTERPRET, which the tests set, is unset), whatever this machine has. Last, with Liger
made missing, ``preflight.liger_choice`` as it answers on a CUDA machine (cuda=True), which reads the
model's configuration (transformers).
"""
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

HEAVY = ("transformers", "deepspeed", "peft", "liger_kernel", "wandb", "bitsandbytes")
ROOT = Path(tempfile.mkdtemp())
os.environ.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(ROOT / "hub"), NETRC=str(ROOT / "no-netrc"))
for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE",
                 "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(variable, None)
(ROOT / "hub" / "models--spotfast--cached").mkdir(parents=True)

from spot_fast import preflight  # noqa: E402
from spot_fast.models import ASSETS, BUILTIN_MODEL  # noqa: E402
from spot_fast.train import main as train_main  # noqa: E402

CASES = {
    "deepspeed": (["deepspeed"], []),
    "wandb": (["wandb"], ["--report-to", "wandb"]),
    "wandb key": ([], ["--report-to", "wandb"]),
    "tensorboard": (["tensorboard"], ["--report-to", "tensorboard"]),
    "bitsandbytes": (["bitsandbytes"], ["--load-in-4bit", "--lora-r", "8"]),
    "flex attention": (["torch.nn.attention.flex_attention"], ["--attention", "flex"]),
    "liger on": ([], ["--liger", "on"]),
    "hub": ([], ["--model", "spotfast/absent", "--data", str(ASSETS / "pairs.jsonl")]),
    "hub, cached": ([], ["--model", "spotfast/cached", "--data", str(ASSETS / "pairs.jsonl")]),
}
WITHOUT_CUDA = {"triton without CUDA": ["--kernel-backend", "triton"]}


@contextlib.contextmanager
def missing(names):
    """``names`` (and their submodules) are missing while the context lasts."""
    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if any(m == n or m.startswith(n + ".") for n in names)}
    sys.modules.update(dict.fromkeys(names))
    try:
        yield
    finally:
        for name in names:
            del sys.modules[name]
        sys.modules.update(saved)


@contextlib.contextmanager
def without_cuda():
    cuda_available, interpret = preflight.cuda_available, os.environ.pop("TRITON_INTERPRET", None)
    preflight.cuda_available = lambda: False
    try:
        yield
    finally:
        preflight.cuda_available = cuda_available
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret


def run_case(names, flags):
    output_dir = ROOT / "runs" / "-".join(flags or ["default"])
    with missing(names):
        try:
            code = train_main(["--output-dir", str(output_dir), *flags])
        except SystemExit as stop:
            code = stop.code
        except Exception as error:  # a run that got past the option checks and died later
            code = f"raised {type(error).__name__}: {error}"
    return {"exit": code, "output_dir_exists": output_dir.exists(), "heavy": [m for m in HEAVY if sys.modules.get(m)]}


def main(out_path):
    results = {name: run_case(names, flags) for name, (names, flags) in CASES.items()}
    with without_cuda():
        results.update({name: run_case([], flags) for name, flags in WITHOUT_CUDA.items()})
    with missing(["liger_kernel"]):
        results["liger auto, CUDA"] = preflight.liger_choice("auto", BUILTIN_MODEL, True)
        try:
            preflight.liger_choice("on", BUILTIN_MODEL, True)
        except preflight.RequirementError as error:
            results["liger on, CUDA"] = str(error)
    results["liger support"] = {t: preflight.liger_support(t) for t in ("qwen3", "no_such_architecture")}
    Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
