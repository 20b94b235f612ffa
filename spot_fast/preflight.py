"""What a run needs from its machine, checked right after its options and before any work.

``check_environment`` runs inside ``config.parse_config``: before the data is read, the process group
started or transformers imported. Each failure is one ``RequirementError`` line that names the
option and the fix (the install command); an ``auto`` option resolves to what is there (the run's
start summary, ``summary.py``, says what it chose and why). Packages are looked up with ``importlib.util.find_spec``
(nothing is imported), except Liger where it would run: its import says which architectures it
has kernels for.

- DeepSpeed: the trainer needs it (tools/install.sh builds it against the installed torch).
- ``--liger``: ``auto`` is on where CUDA is present, liger-kernel imports and has kernels for the
  model's architecture (its ``model_type``, read from the model's configuration), off otherwise;
  ``on`` requires all three.
- ``--report-to tensorboard|wandb``: the package; W&B also an API key, unless ``WANDB_MODE`` is
  ``offline`` or ``disabled``: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or the netrc entry
  that ``wandb login`` writes (``NETRC`` or ``~/.netrc``) for the W&B host. ``auto``: TensorBoard
  where the package is installed.
- ``--load-in-4bit``: bitsandbytes (``config.check_four_bit``).
- ``--attention flex`` / ``varlen``: what the backend's record says it needs (``attention.ATTENTION_BACKENDS``):
  FlexAttention and CUDA (no CPU backward in torch 2.13); on CUDA, a torch with ``varlen_attn``.
- ``--kernel-backend triton``: triton, and where its kernels run (``spot_kernels``' ``triton_available``):
  CUDA, or the CPU under ``TRITON_INTERPRET=1`` (Triton's interpreter, which the tests use).
- A hub id (``--model``, ``--behavior-model``) without ``HF_HUB_OFFLINE=1``: the hub must answer a
  connection within ``HUB_TIMEOUT_S`` (where an HTTPS proxy is set, the proxy is trusted), else
  huggingface_hub retries for about a minute before transformers fails or falls back to its cache.
"""
import functools
import importlib.util
import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from .models import is_hub_id

HUB_TIMEOUT_S = 5.0
INSTALL = {
    "deepspeed": "pip install --no-build-isolation deepspeed==0.19.8",
    "liger_kernel": "pip install liger-kernel",
    "tensorboard": "pip install tensorboard",
    "wandb": "pip install wandb",
    "triton": "pip install triton",
}


class RequirementError(ValueError):
    """An option needs something this machine lacks; the message names the option and the fix."""


def installed(module):
    return importlib.util.find_spec(module) is not None


def cuda_available():
    import torch
    return torch.cuda.is_available()


def liger_support(model_type):
    """``(True, why)`` where liger-kernel imports and has kernels for ``model_type``, else ``(False, why)``."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as error:
        return False, f"liger-kernel does not import ({error}): {INSTALL['liger_kernel']}"
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return False, f"liger-kernel has no kernels for model type {model_type!r}"
    return True, f"liger-kernel has kernels for model type {model_type!r}"


@functools.lru_cache(maxsize=None)
def liger_choice(setting, model, cuda):
    """``(apply Liger, why)`` for ``--liger setting`` on ``model``; RequirementError where ``on``
    cannot be honoured. Cached: the trainer asks again when it loads the model."""
    if setting == "off":
        return False, "--liger off"
    if not cuda:
        if setting == "on":
            raise RequirementError("--liger on needs CUDA: Liger's kernels are Triton GPU kernels")
        return False, "no CUDA"
    from .models import pretrained_config
    supported, why = liger_support(pretrained_config(model).model_type)
    if setting == "on" and not supported:
        raise RequirementError(f"--liger on: {why}")
    return supported, why


def wandb_key_source():
    """Where W&B would find credentials (a short description), or None."""
    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(variable):
            return variable
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return str(path) if entry and entry[2] else None


def report_to_choice(report_to):
    """The report ``--report-to`` names, ``auto`` resolved: "tensorboard", "wandb" or "none"."""
    if report_to == "auto":
        return "tensorboard" if installed("tensorboard") else "none"
    return report_to


def check_report_to(report_to):
    if report_to in ("tensorboard", "wandb") and not installed(report_to):
        raise RequirementError(f"--report-to {report_to} needs the {report_to} package: {INSTALL[report_to]}")
    if report_to == "wandb" and os.environ.get("WANDB_MODE") not in ("offline", "disabled") and not wandb_key_source():
        raise RequirementError("--report-to wandb: no W&B API key (WANDB_API_KEY, or `wandb login`, which writes "
                               "~/.netrc); or set WANDB_MODE=offline to write the run under OUTPUT_DIR/wandb for a "
                               "later `wandb sync`")


def check_attention(choice):
    """RequirementError where ``--attention choice`` cannot run here (its ``AttentionBackend`` says why)."""
    from .attention import ATTENTION_BACKENDS
    if choice in ATTENTION_BACKENDS and (why := ATTENTION_BACKENDS[choice].unavailable(cuda_available())):
        raise RequirementError(f"{why}: use --attention sdpa")


def check_triton_backend():
    import torch
    from spot_kernels.linear_logprobs import triton_available
    if not installed("triton"):
        raise RequirementError(f"--kernel-backend triton needs triton, which is not installed: {INSTALL['triton']}")
    if not triton_available(torch.device("cuda" if cuda_available() else "cpu")):
        raise RequirementError(f"--kernel-backend triton needs CUDA, and this torch ({torch.__version__}) sees no "
                               f"GPU: use --kernel-backend chunked (what auto picks without CUDA)")


def hub_cache_dir(name):
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}"


def check_hub_reachable(option, name):
    """RequirementError for a hub id (``models.is_hub_id``; a missing directory is refused when the model
    is loaded) when the hub does not answer and ``HF_HUB_OFFLINE`` is not set. The one hub check of the
    trainer, spot-fast-rectify and spot-fast-eval: one line in seconds, where transformers would retry
    for about a minute and print every failed request."""
    from huggingface_hub import constants
    if not is_hub_id(name) or constants.is_offline_mode():
        return
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_TIMEOUT_S).close()
        return
    except OSError as error:
        problem = f"the hub ({constants.ENDPOINT}) cannot be reached ({error.strerror or error})"
    cached = hub_cache_dir(name)
    if cached.is_dir():
        fix = f"it is in the local cache ({cached}): set HF_HUB_OFFLINE=1 to load it from there"
    else:
        fix = (f"it is not in the local cache either ({cached}): download it where the hub is reachable "
               f"(`hf download {name}`), then run with HF_HUB_OFFLINE=1, or give a local directory")
    raise RequirementError(f"{option} {name}: {problem}; {fix}")


def check_environment(config):
    """RequirementError for the first thing ``config`` needs that this machine lacks."""
    if not installed("deepspeed"):
        raise RequirementError(f"spot_fast/train.py needs DeepSpeed, which is not installed: {INSTALL['deepspeed']}")
    check_report_to(config.report_to)
    check_attention(config.attention)
    if config.kernel_backend == "triton":
        check_triton_backend()
    check_hub_reachable("--model", config.model)
    if config.behavior_model:
        check_hub_reachable("--behavior-model", config.behavior_model)
    liger_choice(config.liger, config.model, cuda_available())

