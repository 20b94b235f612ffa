r"""Activation memory of a training step per ``--gradient-checkpointing`` mode, side by side in one run.

    python benchmarks/bench_activation_memory.py          # writes benchmarks/results/activation-memory-<cpu>.{json,md}
    python benchmarks/bench_activation_memory.py --toy    # the built-in tiny model, seconds (the test runs it)

The model body (embeddings and decoder layers; spot-fast's fused LM head keeps O(tokens) and is left
out) runs one forward and one backward (of a fixed upstream gradient) under each mode of
``spot_fast.activation_checkpointing`` (``off``, ``on``, ``selective``, ``selective-half``), applied as
the trainer applies it. Measured:

1. **Real tensors, this machine's CPU.** A small Qwen3 with Qwen3-8B's proportions (hidden 512, query
   heads x head dim = hidden, 1/4 of it for keys and values, MLP 3x hidden, 4 layers), fp32, one causal
   sequence of ``--tokens`` tokens, SDPA (the CPU's fused kernel: no [L, L] tensor is kept, as on a
   GPU). Side by side:

   - torch's accounting (``LiveBytes``): a ``TorchDispatchMode`` that records every storage an op
     creates and, through a weak reference, when it is freed; it reports the bytes still held when the
     forward returns (what the backward will read, the output included) and the peak over the forward
     and the backward of every recorded storage except the parameters' gradients (the backward's
     temporaries and the recompute included);
   - peak RSS: a fresh process per mode runs the same step; its peak resident set over the step
     (``VmHWM``, reset to the current resident set just before the forward through
     ``/proc/self/clear_refs``, Linux) minus its resident set then, with glibc's mmap threshold pinned
     at 64 KiB so that freed tensors go back to the system. This includes the parameters' gradients
     (given beside it) and the allocator's slack.

2. **Qwen3-8B's shapes, the meta device** (``--no-8b`` skips it). bf16, one SPoT-like pair tree
   (a 150-token prompt, a 1000-token shared answer prefix, 1000-token suffixes), varlen attention
   through torch's ``varlen_attn`` op (its meta kernel; what ``--attention varlen`` runs on a GPU:
   the suffixes' keys are gathered with their trunk's, and the gathered keys and values are kept for
   the backward). ``LiveBytes`` only: meta tensors have sizes and lifetimes, no memory. Without Liger's
   kernels (``--liger auto`` uses them on CUDA where installed; their RMSNorm and SwiGLU keep less
   under ``off``).

Per token: the bytes divided by the tokens forwarded.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from common import RESULTS_DIR, device_name, proc_status_bytes, reset_peak_resident, slug, write_report
from spot_fast import activation_checkpointing

MODES = ("off", "on", "selective", "selective-half")
MIB = 2 ** 20


class LiveBytes(TorchDispatchMode):
    """Every storage an op creates inside the mode, with its bytes, and when it is freed: a timeline of
    (storage number, +bytes) at creation and (storage number, -bytes) when the storage is freed.
    Storages of ``existing`` tensors (parameters, buffers, inputs) are never recorded, also where an op
    returns a view of one (a transposed weight). ``mark()`` notes the current point of the timeline."""

    def __init__(self, existing=()):
        super().__init__()
        self.numbers = WeakIdKeyDictionary()  # storage -> its number (None: existing before the mode)
        for tensor in existing:
            self.numbers[tensor.untyped_storage()] = None
        self.events = []
        self.marks = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.record(value.untyped_storage())
        return out

    def record(self, storage):
        if storage in self.numbers:
            return
        number, size = len(self.events), storage.nbytes()
        self.numbers[storage] = number
        self.events.append((number, size))
        weakref.finalize(storage, self.events.append, (number, -size))

    def number(self, tensor):
        return self.numbers.get(tensor.untyped_storage())

    def mark(self, name):
        self.marks[name] = len(self.events)

    def held(self, until, excluded=()):
        """Bytes alive at the timeline point ``until``, storages numbered in ``excluded`` left out."""
        return sum(size for number, size in self.events[:until] if number not in excluded)

    def peak(self, excluded=()):
        live = peak = 0
        for number, size in self.events:
            if number not in excluded:
                live += size
                peak = max(peak, live)
        return peak


def small_qwen3(toy):
    """The CPU model's configuration: Qwen3-8B's proportions at hidden 512 (toy: the built-in model's)."""
    from transformers import Qwen3Config

    from spot_fast.models import tiny_qwen3_config
    if toy:
        return tiny_qwen3_config(1000)
    return Qwen3Config(vocab_size=1000, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=128, max_position_embeddings=40960,
                       tie_word_embeddings=False)


def qwen3_8b():
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       rope_theta=1000000.0, tie_word_embeddings=False)


def step_bytes(body, inputs, mode, tokens):
    """One forward and backward of ``body`` on ``inputs`` under ``mode``, counted by ``LiveBytes``:
    {"held_after_forward", "peak"} in bytes per token (parameter gradients left out), and the bytes
    of the parameter gradients."""
    activation_checkpointing.enable(body, mode)
    body.zero_grad(set_to_none=True)
    existing = [*body.parameters(), *body.buffers(), *(v for v in tree_flatten(inputs)[0] if isinstance(v, torch.Tensor))]
    with LiveBytes(existing) as live:
        hidden = body(**inputs, use_cache=False).last_hidden_state
        live.mark("forward")
        upstream = torch.ones_like(hidden)
        hidden.backward(upstream)
        del hidden, upstream
    activation_checkpointing.enable(body, "off")
    grads = {live.number(p.grad) for p in body.parameters() if p.grad is not None} - {None}
    grad_bytes = sum(p.grad.untyped_storage().nbytes() for p in body.parameters() if p.grad is not None)
    return {"held_after_forward": live.held(live.marks["forward"], grads) / tokens,
            "peak": live.peak(grads) / tokens}, grad_bytes


def cpu_model(toy, seed=0):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(small_qwen3(toy), attn_implementation="sdpa").model.train()


def cpu_inputs(tokens):
    generator = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 1000, (1, tokens), generator=generator)}


def rss_step(toy, tokens, mode):
    """In this process (a fresh one): the peak resident set over one step minus the resident set
    before its forward, KiB. The peak is reset right before the forward (``/proc/self/clear_refs``)."""
    body, inputs = cpu_model(toy), cpu_inputs(tokens)
    activation_checkpointing.enable(body, mode)
    reset_peak_resident()
    before = proc_status_bytes("VmRSS") // 1024
    hidden = body(**inputs, use_cache=False).last_hidden_state
    hidden.backward(torch.ones_like(hidden))
    peak = proc_status_bytes("VmHWM") // 1024
    return {"before_kib": before, "peak_kib": peak, "step_kib": peak - before}


def rss_in_fresh_process(toy, tokens, mode):
    """``rss_step`` in a fresh Python, run in this folder (``-c`` imports from its working directory)."""
    code = f"import json, bench_activation_memory as b; print(json.dumps(b.rss_step({toy!r}, {tokens!r}, {mode!r})))"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800,
                          cwd=Path(__file__).resolve().parent)
    if done.returncode:
        raise RuntimeError(f"the RSS measurement of {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def meta_varlen_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, varlen_segments=None,
                        **kwargs):
    """``varlen_attention_forward`` with torch's ``varlen_attn`` as the kernel whatever the device (its
    meta kernel here; the trainer picks the CPU reference off CUDA)."""
    from spot_fast.varlen_attention import causal_varlen_attention, torch_varlen_attn
    rows, heads, length, head_dim = query.shape
    flat = lambda t: t.transpose(1, 2).reshape(rows * length, t.shape[1], head_dim)  # noqa: E731
    output = causal_varlen_attention(flat(query), flat(key), flat(value), varlen_segments, scale=scaling,
                                     kernel=torch_varlen_attn())
    return output.view(rows, length, heads, head_dim), None


META_VARLEN = "bench_meta_varlen"


def spot_like_tree():
    from spot_fast.batching import collate
    from spot_fast.data import Pair
    shared, prompt, suffix = 1000, 150, 1000
    pair = Pair([5] * prompt, [1] * shared + [2] * suffix, [1] * shared + [3] * suffix, line=1)
    return collate([pair], pack=True, pad_id=0, share_prefix=True)


def meta_8b():
    """``step_bytes`` per mode for Qwen3-8B's body on the meta device, bf16, one SPoT-like tree, varlen."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from spot_fast.attention import varlen_model_inputs
    from spot_fast.varlen_attention import torch_varlen_attn
    if torch_varlen_attn() is None:
        return None
    AttentionInterface.register(META_VARLEN, meta_varlen_forward)
    AttentionMaskInterface.register(META_VARLEN, sdpa_mask)
    with torch.device("meta"):
        body = AutoModelForCausalLM.from_config(qwen3_8b(), attn_implementation=META_VARLEN,
                                                dtype=torch.bfloat16).model.train()
    batch = spot_like_tree().to("meta")
    inputs = varlen_model_inputs(batch)
    tokens = batch.input_ids.numel()
    results = {mode: step_bytes(body, inputs, mode, tokens)[0] for mode in MODES}
    return {"tokens": tokens, "gathered_keys": int(batch.key_index.numel()), "bytes_per_token": results}


def run(args):
    started = time.time()
    body, inputs = cpu_model(args.toy), cpu_inputs(args.tokens)
    config = body.config
    parameters = sum(p.numel() for p in body.parameters())
    cpu = {}
    for mode in MODES:
        print(f"CPU, {mode}: torch's accounting", file=sys.stderr, flush=True)
        cpu[mode], grad_bytes = step_bytes(body, inputs, mode, args.tokens)
    rss = {}
    if not args.no_rss:
        for mode in MODES:
            print(f"CPU, {mode}: peak RSS in a fresh process", file=sys.stderr, flush=True)
            rss[mode] = rss_in_fresh_process(args.toy, args.tokens, mode)
    report = {"device": {"name": device_name(torch.device("cpu")), "type": "cpu"}, "torch": torch.__version__,
              "cpu": {"model": {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                                  "num_attention_heads", "num_key_value_heads", "head_dim",
                                                                  "vocab_size")},
                      "parameters": parameters, "dtype": "float32", "tokens": args.tokens,
                      "parameter_gradient_bytes": grad_bytes, "bytes_per_token": cpu, "peak_rss": rss},
              "meta_8b": None}
    if not args.no_8b:
        print("Qwen3-8B on the meta device", file=sys.stderr, flush=True)
        report["meta_8b"] = meta_8b()
    report["seconds"] = time.time() - started
    return report


def markdown(report):
    c = report["cpu"]
    m = c["model"]
    lines = ["# Activation memory per --gradient-checkpointing mode", "",
             f"Counted and measured on {report['device']['name']} (torch {report['torch']}): the model body's "
             f"forward and backward (of a fixed upstream gradient), no LM head. Per token forwarded.", "",
             f"## Small Qwen3 on the CPU (real tensors)", "",
             f"hidden {m['hidden_size']}, MLP {m['intermediate_size']}, {m['num_hidden_layers']} layers, "
             f"{m['num_attention_heads']} query heads and {m['num_key_value_heads']} key/value head(s) of "
             f"{m['head_dim']}, {c['parameters']:,} parameters; {c['dtype']}, one causal sequence of {c['tokens']} "
             f"tokens, SDPA. torch's accounting: storages created by ops, alive when the forward returns "
             f"(held) and at the peak of forward + backward, parameter gradients left out "
             f"({c['parameter_gradient_bytes'] / MIB:.1f} MiB). Peak RSS: a fresh process per mode, peak "
             f"resident set minus resident set before the forward (parameter gradients and allocator slack "
             f"included).", "",
             "| mode | held after forward (KiB/token) | peak, forward + backward (KiB/token) | "
             "held vs off | peak RSS of the step (MiB) |", "|---|---|---|---|---|"]
    off = c["bytes_per_token"]["off"]["held_after_forward"]
    for mode, b in c["bytes_per_token"].items():
        rss = c["peak_rss"].get(mode)
        rss_mib = f"{rss['step_kib'] / 1024:.0f}" if rss else "-"
        lines.append(f"| {mode} | {b['held_after_forward'] / 1024:.2f} | {b['peak'] / 1024:.2f} | "
                     f"{b['held_after_forward'] / off:.2f} | {rss_mib} |")
    e = report["meta_8b"]
    if e:
        lines += ["", "## Qwen3-8B's shapes on the meta device (torch's accounting)", "",
                  f"bf16, one SPoT-like pair tree of {e['tokens']} tokens (150-token prompt, 1000 shared, two "
                  f"1000-token suffixes; {e['gathered_keys']} gathered keys), varlen attention through torch's "
                  f"varlen_attn op (its meta kernel), no Liger kernels. GiB per 8192 tokens: the per-token bytes "
                  f"times 8192.", "",
                  "| mode | held after forward (MiB/token) | peak, forward + backward (MiB/token) | held vs off | "
                  "peak GiB per 8192 tokens |", "|---|---|---|---|---|"]
        off = e["bytes_per_token"]["off"]["held_after_forward"]
        for mode, b in e["bytes_per_token"].items():
            lines.append(f"| {mode} | {b['held_after_forward'] / MIB:.3f} | {b['peak'] / MIB:.3f} | "
                         f"{b['held_after_forward'] / off:.2f} | {b['peak'] * 8192 / 2 ** 30:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="the built-in tiny model, 64 tokens, no 8B: seconds")
    parser.add_argument("--tokens", type=int, default=None, help="tokens of the CPU sequence (default 2048; toy 64)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS processes")
    parser.add_argument("--no-8b", action="store_true", help="skip Qwen3-8B on the meta device")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem (default benchmarks/results/activation-memory-<cpu>; --toy: none)")
    args = parser.parse_args(argv)
    args.tokens = args.tokens or (64 if args.toy else 2048)
    if args.toy:
        args.no_8b = True
    return args


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    table = markdown(report)
    print(table)
    out = args.out or (None if args.toy else RESULTS_DIR / f"activation-memory-{slug(report['device']['name'])}")
    if out is not None:
        write_report(report, table, out)
    return report


if __name__ == "__main__":
    main()
