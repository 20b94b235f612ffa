"""Benchmark of the LM-head log-prob path: forward + backward of every method, side by side.

    python benchmarks/bench_kernels.py                      # GPU shapes on CUDA, reduced shapes on CPU
    python benchmarks/bench_kernels.py --device cpu --tokens 2048 --methods eager chunked

Every method gets the same inputs (seeded): hidden [N, H] ~ N(0, 1), weight [V, H] ~ N(0, 1/H),
targets uniform in [0, V), no ignored tokens. One run is the forward of the method's loss and the
backward to the gradients of hidden and weight, which ``torch.autograd.grad`` returns (nothing is
accumulated into ``.grad``).

Methods:
- ``eager``, ``chunked``, ``triton``: ``loss = -spot_kernels.linear_logprobs(..., backend).mean()``
  (the token-mean NLL); ``triton`` only on CUDA.
- ``liger-flce``: Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` (mean cross entropy: the same
  loss); CUDA only.
- ``liger-dpo``: Liger-Kernel's ``LigerFusedLinearDPOLoss`` with ``use_ref_model=False`` (our trainer
  reads reference log-probs from a cache), the N tokens arranged as chosen/rejected sequences of
  ``DPO_SEQ_LEN`` tokens; a different loss on the same LM-head work. CUDA only.

Measured, per method and shape:
- time: median over ``--repeats`` runs after one warm-up run; CUDA events on GPU, ``time.perf_counter``
  on CPU. All methods are timed in this process on the same input tensors.
- workspace: peak memory during one run, minus the memory held just before it (the inputs), minus
  the byte sizes of the two gradients every method must return ((N*H + V*H) elements in the input
  dtype; subtracted, not pre-allocated, since the gradients are created by the run). On GPU:
  ``torch.cuda.max_memory_allocated`` in this process. On CPU: the peak resident set size (VmHWM of
  /proc/self/status, reset through /proc/self/clear_refs once the inputs exist) of a fresh
  subprocess that runs only that method, so that no method inherits another's allocator state. The
  allocator is glibc's default, so freed tiles kept in its heap (fragmentation) count too: this is
  what a user's process really holds.
- floor: ``8*N*H*V`` FLOPs (forward, logit recompute, two gradient matmuls) at the matmul rate
  measured here: ``torch.matmul`` of [min(N, 8192), H] x [H, V] in the benchmark dtype.

Prints a table naming the device and writes JSON to a new file, never over a committed one:
benchmarks/results/<device-name-slug>-<UTC time>.json, or --out.
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import spot_kernels
from common import cell, device_name, median_ms, proc_status_bytes, reset_peak_resident, write_results

METHODS = ("eager", "chunked", "triton", "liger-flce", "liger-dpo")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DPO_SEQ_LEN = 1024
MATMUL_MAX_ROWS = 8192
SEED = 0
MIB = 1 << 20


# ---------------------------------------------------------------- inputs and methods

def make_inputs(tokens, hidden_size, vocab_size, dtype, device):
    """Seeded (hidden, weight, targets), the first two requiring grad; made without large temporaries."""
    generator = torch.Generator(device=device).manual_seed(SEED)
    hidden = torch.randn(tokens, hidden_size, dtype=dtype, device=device, generator=generator)
    weight = torch.randn(vocab_size, hidden_size, dtype=dtype, device=device, generator=generator)
    weight.mul_(hidden_size ** -0.5)
    targets = torch.randint(0, vocab_size, (tokens,), device=device, generator=generator)
    return hidden.requires_grad_(), weight.requires_grad_(), targets


def unavailable_reason(method, device, tokens):
    """Why ``method`` cannot run here at ``tokens`` tokens, or None if it can."""
    if method in ("triton", "liger-flce", "liger-dpo") and device.type != "cuda":
        return "needs CUDA"
    if method.startswith("liger") and importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed"
    if method == "liger-dpo" and tokens % (2 * DPO_SEQ_LEN):
        return f"needs N to be a multiple of {2 * DPO_SEQ_LEN} (pairs of {DPO_SEQ_LEN}-token sequences)"
    return None


def loss_function(method):
    """``loss(hidden, weight, targets) -> scalar`` for ``method``."""
    if method in ("eager", "chunked", "triton"):
        return lambda hidden, weight, targets: -spot_kernels.linear_logprobs(hidden, weight, targets, backend=method).mean()
    if method == "liger-flce":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        flce = LigerFusedLinearCrossEntropyLoss()
        return lambda hidden, weight, targets: flce(weight, hidden, targets)
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
    dpo = LigerFusedLinearDPOLoss(use_ref_model=False)

    def dpo_loss(hidden, weight, targets):
        sequences = hidden.shape[0] // DPO_SEQ_LEN
        loss, _metrics = dpo(weight, hidden.view(sequences, DPO_SEQ_LEN, -1), targets.view(sequences, DPO_SEQ_LEN))
        return loss
    return dpo_loss


def forward_backward(loss_fn, hidden, weight, targets):
    """One run: the loss forward, then backward to the gradients of (hidden, weight), which are
    returned (not accumulated into ``.grad``)."""
    return torch.autograd.grad(loss_fn(hidden, weight, targets), (hidden, weight))


def gradient_bytes(hidden, weight):
    """Bytes of the gradients every method must return: one hidden-sized and one weight-sized tensor."""
    return (hidden.numel() + weight.numel()) * hidden.element_size()


# ---------------------------------------------------------------- time

def matmul_flops_per_s(tokens, weight, repeats, device):
    """Measured rate of ``torch.matmul`` of [min(N, MATMUL_MAX_ROWS), H] x [H, V] in weight's dtype."""
    rows = min(tokens, MATMUL_MAX_ROWS)
    vocab_size, hidden_size = weight.shape
    with torch.no_grad():
        a = torch.randn(rows, hidden_size, dtype=weight.dtype, device=device)
        ms = median_ms(lambda: torch.matmul(a, weight.T), repeats, device)
    return 2 * rows * hidden_size * vocab_size / (ms * 1e-3)


# ---------------------------------------------------------------- memory

def measure_cpu_workspace_here(method, tokens, hidden_size, vocab_size, dtype):
    """In this process: workspace of one run of ``method`` on CPU, from resident-set readings.

    First a tiny run of the same method (libraries and thread pools initialize outside the
    measurement), then the inputs, then: reset the peak, read VmRSS (baseline), run once with the
    gradients kept alive, read VmHWM (peak). workspace = peak - baseline - gradient bytes.
    """
    device = torch.device("cpu")
    loss_fn = loss_function(method)
    forward_backward(loss_fn, *make_inputs(16, 16, 64, dtype, device))
    hidden, weight, targets = make_inputs(tokens, hidden_size, vocab_size, dtype, device)
    reset_peak_resident()
    baseline = proc_status_bytes("VmRSS")
    forward_backward(loss_fn, hidden, weight, targets)
    peak = proc_status_bytes("VmHWM")
    grad_bytes = gradient_bytes(hidden, weight)
    return {"workspace_bytes": peak - baseline - grad_bytes, "peak_bytes": peak,
            "baseline_bytes": baseline, "gradient_bytes": grad_bytes}


def measure_cpu_workspace(method, tokens, hidden_size, vocab_size, dtype_name):
    """``measure_cpu_workspace_here`` in a fresh subprocess of this script; returns its dict."""
    command = [sys.executable, str(Path(__file__).resolve()), "--workspace-child", method, "--device", "cpu",
               "--dtype", dtype_name, "--tokens", str(tokens), "--hidden", str(hidden_size), "--vocab", str(vocab_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"workspace subprocess for {method} failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_cuda_workspace(loss_fn, hidden, weight, targets):
    """Workspace of one run on CUDA: max_memory_allocated during it minus allocated before, minus gradients."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    forward_backward(loss_fn, hidden, weight, targets)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    grad_bytes = gradient_bytes(hidden, weight)
    return {"workspace_bytes": peak - baseline - grad_bytes, "peak_bytes": peak,
            "baseline_bytes": baseline, "gradient_bytes": grad_bytes}


# ---------------------------------------------------------------- output

def ratio(value, reference):
    return None if value is None or not reference else value / reference


def print_table(report):
    """The results as a fixed-width table, one row per (shape, method), then the skipped methods."""
    device = report["device"]
    print(f"\nDevice: {device['name']} ({device['type']}, {device['threads']} threads), torch {report['torch']}, "
          f"liger-kernel {report['liger_kernel'] or 'not installed'}")
    print(f"Time: median of {report['repeats']} runs ({report['timer']}); workspace: peak during forward+backward "
          f"minus inputs minus the hidden and weight gradients ({report['memory_source']}).")
    header = f"{'method':<11} {'N x H x V':<20} {'dtype':<6} {'time ms':>10} {'x floor':>8} {'x eager':>8} " \
             f"{'workspace MiB':>14} {'x eager':>8}"
    rule = "-" * len(header)
    for shape in report["shapes"]:
        print(f"\nN={shape['tokens']}: matmul rate {shape['matmul_tflops']:.3f} TFLOP/s, "
              f"floor 8*N*H*V/rate = {shape['floor_ms']:.1f} ms")
        print(header)
        print(rule)
        for row in shape["results"]:
            dims = f"{row['tokens']}x{row['hidden']}x{row['vocab']}"
            if row.get("error"):
                print(f"{row['method']:<11} {dims:<20} {row['dtype']:<6} {row['error']}")
                continue
            print(f"{row['method']:<11} {dims:<20} {row['dtype']:<6} {cell(row['time_ms'], '10.1f')} "
                  f"{cell(row['time_vs_floor'], '8.2f')} {cell(row['time_vs_eager'], '8.2f')} "
                  f"{cell(row['workspace_mib'], '14.1f')} {cell(row['workspace_vs_eager'], '8.3f')}")
        for method, reason in shape["skipped"].items():
            print(f"skipped {method}: {reason}")


# ---------------------------------------------------------------- main

def benchmark_shape(tokens, args, device, methods, progress):
    """All methods at one shape, on one set of inputs; returns the shape's report entry."""
    dtype = DTYPES[args.dtype]
    hidden, weight, targets = make_inputs(tokens, args.hidden, args.vocab, dtype, device)
    rate = matmul_flops_per_s(tokens, weight, args.repeats, device)
    floor_ms = 8 * tokens * args.hidden * args.vocab / rate * 1e3
    results, skipped = [], {}
    for method in methods:
        progress.set_description(f"{method} N={tokens}")
        reason = unavailable_reason(method, device, tokens)
        if reason:
            skipped[method] = reason
            progress.update()
            continue
        row = {"method": method, "tokens": tokens, "hidden": args.hidden, "vocab": args.vocab, "dtype": args.dtype}
        loss_fn = loss_function(method)
        try:
            if device.type == "cuda":
                forward_backward(loss_fn, hidden, weight, targets)  # compile / autotune before measuring
                memory = measure_cuda_workspace(loss_fn, hidden, weight, targets)
            else:
                memory = measure_cpu_workspace(method, tokens, args.hidden, args.vocab, args.dtype)
            time_ms = median_ms(lambda: forward_backward(loss_fn, hidden, weight, targets), args.repeats, device)
        except torch.OutOfMemoryError:
            row["error"] = "out of memory"
        else:
            row.update(time_ms=time_ms, time_vs_floor=time_ms / floor_ms,
                       workspace_mib=memory["workspace_bytes"] / MIB, peak_mib=memory["peak_bytes"] / MIB,
                       baseline_mib=memory["baseline_bytes"] / MIB, gradient_mib=memory["gradient_bytes"] / MIB)
        results.append(row)
        progress.update()
    eager = next((row for row in results if row["method"] == "eager" and not row.get("error")), {})
    for row in results:
        if not row.get("error"):
            row["time_vs_eager"] = ratio(row["time_ms"], eager.get("time_ms"))
            row["workspace_vs_eager"] = ratio(row["workspace_mib"], eager.get("workspace_mib"))
    return {"tokens": tokens, "matmul_tflops": rate / 1e12, "floor_ms": floor_ms, "results": results, "skipped": skipped}


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--tokens", type=int, nargs="+", help="N values (default: 4096 16384 32768 on CUDA, 2048 on CPU)")
    parser.add_argument("--hidden", type=int, help="H (default: 4096 on CUDA, 512 on CPU)")
    parser.add_argument("--vocab", type=int, help="V (default: 151936 on CUDA, 32000 on CPU)")
    parser.add_argument("--repeats", type=int, help="timed runs per method (default: 10 on CUDA, 3 on CPU)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", type=Path, help="JSON path (default: a new benchmarks/results/<device-name-slug>-<UTC time>.json)")
    parser.add_argument("--workspace-child", choices=METHODS,
                        help="internal: measure this method's CPU workspace in this process, print it as JSON")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    defaults = {"dtype": "bf16" if on_cuda else "fp32", "tokens": [4096, 16384, 32768] if on_cuda else [2048],
                "hidden": 4096 if on_cuda else 512, "vocab": 151936 if on_cuda else 32000,
                "repeats": 10 if on_cuda else 3}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.workspace_child:
        measured = measure_cpu_workspace_here(args.workspace_child, args.tokens[0], args.hidden, args.vocab,
                                              DTYPES[args.dtype])
        print(json.dumps(measured))
        return
    device = torch.device(args.device)
    name = device_name(device)
    liger = importlib.util.find_spec("liger_kernel")
    report = {
        "device": {"name": name, "type": device.type, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "torch": torch.__version__,
        "liger_kernel": importlib.metadata.version("liger-kernel") if liger else None,
        "dtype": args.dtype, "repeats": args.repeats,
        "timer": "CUDA events" if device.type == "cuda" else "time.perf_counter",
        "memory_source": "torch.cuda.max_memory_allocated" if device.type == "cuda"
        else "VmHWM of a fresh subprocess per method (glibc default allocator)",
        "shapes": [],
    }
    with tqdm(total=len(args.tokens) * len(args.methods), unit="method") as progress:
        for tokens in args.tokens:
            report["shapes"].append(benchmark_shape(tokens, args, device, args.methods, progress))
    print_table(report)
    print()
    write_results(report, "", args.out)


if __name__ == "__main__":
    main()
