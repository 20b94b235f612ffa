"""The two blocks a training run prints: what it is about to do (``start_block``, once the data is read
and the backends chosen, before the model loads) and what it did (``end_block``, after the last output
is written). Rank 0 prints them; nothing here touches the device.

Start: the model and its dtype; the devices; the data (pairs, tokens forwarded per epoch with pair
trees and without, the shared-prefix ratio: the share of the unshared tokens a tree does not forward,
as ``batching.pair_tokens`` counts them); the effective batch and the steps; the attention backend,
the LM-head kernel backend, Liger and where metrics go, each with why (an ``auto`` resolved).
End: wall time, training tokens/s (from the logged rows: each row's tokens over the time of its
window, so time spent scoring, evaluating and saving is not counted), the final metrics (the last
logged training row, and the last evaluation), and where every output is.
"""
import json
import time
from pathlib import Path

from .batching import pair_tokens
from .checkpoint import checkpoints
from .preflight import liger_choice, report_to_choice

_began = [time.perf_counter()]
FINAL_METRICS = ("loss", "rewards/margin", "rewards/accuracy", "chosen/nll", "chosen/token_accuracy", "delta",
                 "pear/weight_mean", "retain/kl_k3")


def mark_start():
    """The moment the run began (``end_block``'s wall time counts from here)."""
    _began[0] = time.perf_counter()


def token_counts(pairs):
    """(tokens forwarded with pair trees, without) over ``pairs``."""
    return sum(pair_tokens(p, True) for p in pairs), sum(pair_tokens(p, False) for p in pairs)


def kernel_choice(setting, backend):
    if setting != "auto":
        return f"{backend} (--kernel-backend {setting})"
    return f"{backend} (auto: {'triton on CUDA' if backend == 'triton' else 'chunked PyTorch without CUDA'})"


def start_block(config, *, world, device, dtype, pairs, stats, order, attention, kernel_backend, notes=()):
    """The start summary, as lines: ``attention`` is ``(name, why)`` from ``choose_attention``,
    ``kernel_backend`` the concrete LM-head backend (``spot_kernels.resolve_backend``), ``notes`` extra
    lines (the gradient accumulation note)."""
    what = "pairs" if config.needs_rejected else "examples"
    trl = (f", {stats.truncated_prompts} prompts truncated ({stats.prompt_cut_for_longer} cut for the longer "
           f"answer)" if config.render == "trl020" else "")
    shared, unshared = token_counts(pairs)
    share = config.share_prefix == "on" and config.needs_rejected
    tokens = (f"{shared:,} forwarded per epoch with pair trees, {unshared:,} without: shared-prefix ratio "
              f"{1 - shared / unshared:.1%}" if share else
              f"{(shared if share else unshared):,} forwarded per epoch"
              + (" (--share-prefix off)" if config.needs_rejected else " (one answer: no pair trees)"))
    report = report_to_choice(config.report_to)
    why = (f"--report-to auto: tensorboard is {'' if report == 'tensorboard' else 'not '}installed"
           if config.report_to == "auto" else f"--report-to {config.report_to}")
    liger_on, liger_why = liger_choice(config.liger, config.model, device.type == "cuda")
    steps = order.total_steps
    epochs = f"{config.epochs} epoch(s) of {order.steps_per_epoch}"
    if config.max_steps and config.max_steps < order.steps_per_epoch * config.epochs:
        epochs = f"--max-steps {config.max_steps}; {order.steps_per_epoch} per epoch"
    rows = [
        ("model", f"{config.model} ({str(dtype).removeprefix('torch.')}); objective {config.loss}, "
                  f"learning rate {config.learning_rate:g}"),
        ("devices", f"{world} process(es), {device.type}"),
        ("data", f"{stats.pairs} {what} from {config.data}: {stats.skipped_long_prompt} skipped (prompt longer than "
                 f"max_length), {stats.truncated_completions} completions truncated{trl}, "
                 f"{order.left_out_per_epoch} left out per epoch"),
        ("tokens", tokens),
        ("batch", f"{order.global_batch} {what} per optimizer step = {config.per_device_batch} per device x "
                  f"{config.grad_accum} accumulated x {world} process(es)"),
        ("steps", f"{steps} optimizer steps ({epochs})"),
        ("attention", f"{attention[0]} ({attention[1]})"),
        ("LM head", kernel_choice(config.kernel_backend, kernel_backend)),
        ("Liger", f"{'on' if liger_on else 'off'} ({liger_why})"),
        ("metrics", f"metrics.jsonl{' and TensorBoard' if report == 'tensorboard' else ''}"
                    f"{' and W&B' if report == 'wandb' else ''} ({why})"),
    ]
    return ["run:"] + [f"  {name:<12} {text}" for name, text in rows] + [f"  {'note':<12} {note}" for note in notes if note]


def logged_rows(path, after_step):
    """The rows of ``metrics.jsonl`` logged after ``after_step`` (this run's, where it resumed)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [row for row in map(json.loads, filter(None, lines)) if row.get("step", 0) > after_step]


def end_block(output_dir, metrics_path, final, first_step, last_step, extra_outputs=()):
    """The end summary, as lines: wall time, training tokens/s, the final metrics and the outputs.
    ``first_step``: the step this run started from (0, or where it resumed)."""
    output_dir = Path(output_dir)
    rows = logged_rows(metrics_path, first_step)
    trained = [r for r in rows if "tokens_per_s" in r and r["tokens_per_s"] > 0]
    tokens = sum(r["tokens/forwarded"] for r in trained)
    seconds = sum(r["tokens/forwarded"] / r["tokens_per_s"] for r in trained)
    last = trained[-1] if trained else {}
    evaluation = next((r for r in reversed(rows) if any(k.startswith("eval/") for k in r)), {})
    metrics = [f"{k} {last[k]:.4g}" for k in FINAL_METRICS if k in last]
    metrics += [f"{k} {v:.4g}" for k, v in evaluation.items() if k.startswith("eval/") and isinstance(v, (int, float))]
    saved = [str(p) for p in checkpoints(output_dir)]
    outputs = [("model", f"model saved to {final}")]
    outputs.append(("checkpoints", ", ".join(saved) if saved else "none kept (--save-every N writes them)"))
    outputs.append(("metrics", str(metrics_path)))
    for name, path in (("plot", output_dir / "training.png"), ("config", output_dir / "config.yaml"),
                       ("TensorBoard", output_dir / "tensorboard"), ("W&B", output_dir / "wandb"),
                       *extra_outputs):
        if Path(path).exists():
            outputs.append((name, str(path)))
    wall = time.perf_counter() - _began[0]
    lines = ["done:",
             f"  {'time':<12} {wall:.1f} s wall, {seconds:.1f} s in training steps {first_step + 1}-{last_step}",
             f"  {'tokens/s':<12} {tokens / seconds if seconds else 0:,.0f} ({tokens:,} tokens forwarded)",
             f"  {'final':<12} step {last.get('step', last_step)}: {', '.join(metrics) or 'none logged'}"]
    return lines + [f"  {name:<12} {text}" for name, text in outputs]
