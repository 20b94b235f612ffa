"""Third-party messages that say nothing about a run, each silenced exactly (by its text).

- torch deprecates ``all_gather_into_tensor`` and ``reduce_scatter_tensor`` with a FutureWarning;
  DeepSpeed calls both (ZeRO-3: every gather and gradient scatter), and the project's code calls
  neither. Python shows a warning once per code location, but every change of the warning filters
  forgets what was shown, and DeepSpeed's CPU accelerator runs ``numactl`` through ``subprocess`` in
  each ``device_count()`` (about twice per micro-batch under ZeRO-3), whose ``os.get_exec_path``
  enters ``warnings.catch_warnings``: so the warning came back every micro-batch, on every rank.
- bitsandbytes logs at import, on a CPU with AVX512-BF16, that it could not fetch an optional CPU
  kernel from the hub ("Failed to load CPU gemm_4bit_forward from kernels-community"); it uses its
  own instead.
- PEFT warns "Unable to fetch remote file" when it saves an adapter without network: a lookup of the
  base model's config on the hub, which it then skips.
- DeepSpeed warns "Setting accelerator to CPU" on every run without CUDA (the run's start block says
  the device), and prints "DeepSpeed <op> built successfully" each time it loads its CPU
  communication op, built or not (``quiet_op_load``; the first build is announced by
  ``engine.announce_communication_op_build``). A failed build still raises, with the compiler's output.
"""
import contextlib
import io
import re
import logging
import warnings

BITSANDBYTES_CPU_KERNEL = "Failed to load CPU gemm_4bit_forward from kernels-community"
DEEPSPEED_CPU_ACCELERATOR = "Setting accelerator to CPU."
DEEPSPEED_OP_LOADED = re.compile(r"DeepSpeed \S+ built successfully")


def silence_known_noise():
    """Installs the filters; call once per process, before the libraries speak."""
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` "
                            r"is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Unable to fetch remote file", category=UserWarning, module=r"peft\.")
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: not record.getMessage().startswith(BITSANDBYTES_CPU_KERNEL))
    logging.getLogger("DeepSpeed").addFilter(  # DeepSpeed's logger (deepspeed.utils.logging), made or not yet
        lambda record: not record.getMessage().startswith(DEEPSPEED_CPU_ACCELERATOR))


@contextlib.contextmanager
def quiet_op_load():
    """Inside: what is printed to ``sys.stdout`` is kept and printed after, less DeepSpeed's "built
    successfully" lines (also when the block raises)."""
    kept = io.StringIO()
    try:
        with contextlib.redirect_stdout(kept):
            yield
    finally:
        text = "".join(line for line in kept.getvalue().splitlines(keepends=True)
                       if not DEEPSPEED_OP_LOADED.fullmatch(line.strip()))
        print(text, end="", flush=True)
