"""Benchmark of one trainer step: padded pairs, packed pairs and shared-prefix pair trees, side by side.

    python benchmarks/bench_train.py                 # CPU: small model; CUDA: a Qwen3-1.7B-shaped model
    python benchmarks/bench_train.py --fractions 0.5 --answer-tokens 2048 --attention sdpa flex

The model is built from a config (no download): on CPU hidden 256, 4 layers, the Qwen3 vocabulary
(151936), fp32; on CUDA Qwen3-1.7B's shape (hidden 2048, 28 layers, 16 heads, 8 KV heads, head dim
128, MLP 6144, vocabulary 151936) in bf16, initialized on the GPU, with gradient checkpointing and Liger's body
kernels (RMSNorm, RoPE, SwiGLU) where Liger is installed (the JSON's ``liger`` says whether they were applied,
and why). Weights are random (seeded): the step's cost does
not depend on them.

Data: SPoT-like pairs whose two answers share their first ``fraction`` of tokens (the Oracle's first
edit comes after them) and then differ; each answer has ``--answer-tokens`` tokens after a
``--prompt-tokens`` prompt. Token ids are random (seeded).

One step, as the trainer takes it: ``--pairs`` pairs in one micro-batch, forward through the body and
the fused head, the ``spot_bco`` loss against reference log-probs, backward, and an AdamW step.
Layouts (``spot_fast.batching``):
- ``padded``: the 2B sequences, one row each, padded to the longest;
- ``packed``: the 2B sequences in one row, no padding;
- ``shared``: B pair trees in one row (prompt and common prefix forwarded once).

Measured per (fraction, layout, attention): tokens forwarded per pair (real tokens; padded rows also
forward their padding, reported as the padded row length), step time (median over ``--repeats``
steps after one warm-up step; CUDA events on GPU), peak memory (CUDA: ``max_memory_allocated`` during
the step; CPU: not measured), useful tokens/s (the tokens of the two sequences of every pair, which any
layout must process: ``2 * (prompt + answer)`` per pair, over the step time), effective MFU (useful
tokens x (6 x parameters + attention FLOPs per token) / step time / the matmul rate measured here:
the work an unshared trainer would do, so pair trees can exceed the FLOPs they execute, even 1), and
the step time of each layout over ``packed``'s at the same fraction.

Prints a table naming the device and writes JSON to a new file beside the committed results
(``results/train-<device>-<UTC time>.json``) or ``--out``.
"""
import argparse
import sys
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from common import cell, device_name, median_ms, write_results
from spot_fast.attention import ATTENTION_BACKENDS
from spot_fast.batching import collate
from spot_fast.data import Pair
from spot_fast.logprob_head import batch_logps, install_logprob_head
from spot_fast.objective import Objective, micro_batch_loss
from spot_fast.preflight import liger_support
from spot_kernels import RewardShift

LAYOUTS = {"padded": (False, False), "packed": (True, False), "shared": (True, True)}
VOCAB = 151936
SEED = 0


def model_config(device, toy=False):
    if toy:  # a code path check, not a measurement
        return Qwen3Config(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096)
    if device.type == "cuda":  # Qwen3-1.7B's shape
        return Qwen3Config(vocab_size=VOCAB, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                           num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                           max_position_embeddings=40960)
    return Qwen3Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False,
                       max_position_embeddings=40960)


def model_dtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def liger_for(device):
    """``(apply Liger's body kernels, why)``: on CUDA where liger-kernel supports Qwen3."""
    return liger_support("qwen3") if device.type == "cuda" else (False, "no CUDA")


def build_model(config, attention, device, dtype):
    """The benchmark model, initialized where it runs in the dtype it runs in: on CUDA no fp32 copy of
    its ~2B parameters is ever made on the CPU (building there first took minutes and 8 GB)."""
    torch.manual_seed(SEED)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(config, dtype=dtype)
    backend = ATTENTION_BACKENDS[attention]
    backend.register()
    model.set_attn_implementation(backend.implementation)
    if liger_for(device)[0]:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    if device.type == "cuda":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return install_logprob_head(model).train()


def spot_pairs(count, prompt_tokens, answer_tokens, fraction, seed, vocab=VOCAB):
    """Pairs whose answers share their first ``round(fraction * answer_tokens)`` tokens, then differ."""
    generator = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(10, vocab, (n,), generator=generator).tolist()  # noqa: E731
    shared = round(fraction * answer_tokens)
    pairs = []
    for line in range(count):
        common = ids(shared)
        chosen, rejected = common + ids(answer_tokens - shared), common + ids(answer_tokens - shared)
        rejected[shared] = (chosen[shared] + 1) % vocab if shared < answer_tokens else rejected[shared - 1]
        pairs.append(Pair(ids(prompt_tokens), chosen, rejected, line=line))
    return pairs


def parameters_without_embeddings(model):
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embedding)


def attention_flops_per_token(config, tokens_in_context):
    """Forward + backward FLOPs of the attention scores and values per token, causal (half the
    context on average): 6 x 2 x layers x heads x head_dim x context / 2."""
    return 6 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * tokens_in_context


def matmul_rate(device, toy=False):
    size = 256 if toy else 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, dtype=dtype, device=device)
    with torch.no_grad():
        ms = median_ms(lambda: a @ a, 5, device)
    return 2 * size ** 3 / (ms * 1e-3)


def measure(model, pairs, layout, repeats, device):
    pack, share = LAYOUTS[layout]
    batch = collate(pairs, pack=pack, pad_id=0, share_prefix=share).to(device)
    reference = torch.full((len(pairs), 2), -float(len(pairs[0].chosen_ids)) * 12.0, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
    objective = Objective("spot_bco", 0.1, RewardShift())

    def step():
        loss, _, _ = micro_batch_loss(batch_logps(model, batch), batch, reference, objective)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up, and AdamW's state exists before memory is measured
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ms = median_ms(step, repeats, device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    forwarded = batch.input_ids.numel() if layout == "padded" else batch.num_tokens
    return {"tokens_forwarded_per_pair": forwarded / len(pairs), "step_ms": ms, "peak_memory_bytes": peak}


def run(args):
    device = torch.device(args.device)
    config = model_config(device, args.toy)
    rate = matmul_rate(device, args.toy)
    useful_per_pair = 2 * (args.prompt_tokens + args.answer_tokens)
    results = []
    for attention in args.attention:
        model = build_model(config, attention, device, model_dtype(device))
        flops_per_token = 6 * parameters_without_embeddings(model) + attention_flops_per_token(
            config, args.prompt_tokens + args.answer_tokens)
        for fraction in args.fractions:
            pairs = spot_pairs(args.pairs, args.prompt_tokens, args.answer_tokens, fraction, SEED, config.vocab_size)
            for layout in args.layouts:
                row = measure(model, pairs, layout, args.repeats, device)
                useful_per_s = useful_per_pair * args.pairs / (row["step_ms"] * 1e-3)
                row.update(attention=attention, fraction=fraction, layout=layout, useful_tokens_per_s=useful_per_s,
                           effective_mfu=useful_per_s * flops_per_token / rate)
                results.append(row)
                print(f"  {attention} fraction {fraction} {layout}: {row['step_ms']:.0f} ms", file=sys.stderr)
        del model
    for row in results:
        packed = [r for r in results if r["attention"] == row["attention"] and r["fraction"] == row["fraction"]
                  and r["layout"] == "packed"]
        row["step_time_vs_packed"] = row["step_ms"] / packed[0]["step_ms"] if packed else None
    model_shape = {key: getattr(config, key) for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                          "num_attention_heads", "num_key_value_heads", "head_dim",
                                                          "vocab_size")}
    return {"device": {"name": device_name(device), "type": device.type, "threads": torch.get_num_threads()},
            "torch": torch.__version__,
            "model": model_shape | {"dtype": "bf16" if device.type == "cuda" else "fp32"},
            "liger": dict(zip(("applied", "why"), liger_for(device))), "matmul_flops_per_s": rate, "pairs": args.pairs, "prompt_tokens": args.prompt_tokens,
        "answer_tokens": args.answer_tokens, "repeats": args.repeats, "results": results}


def print_table(report):
    print(f"one trainer step on {report['device']['name']} (torch {report['torch']}); {report['pairs']} pairs of "
          f"{report['prompt_tokens']} prompt + 2 x {report['answer_tokens']} answer tokens; "
          f"matmul {report['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s; Liger {'on' if report['liger']['applied'] else 'off'} "
          f"({report['liger']['why']})")
    header = f"{'attention':9} {'shared':>6} {'layout':7} {'tokens/pair':>11} {'step ms':>9} {'vs packed':>9} " \
             f"{'useful tok/s':>12} {'eff MFU':>7} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        peak = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f}"
        print(f"{r['attention']:9} {r['fraction']:6.1f} {r['layout']:7} {r['tokens_forwarded_per_pair']:11.0f} "
              f"{r['step_ms']:9.1f} {cell(r['step_time_vs_packed'], '9.3f'):>9} {r['useful_tokens_per_s']:12.0f} "
              f"{r['effective_mfu']:7.3f} {peak:>9}")


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.5, 0.8],
                        help="fraction of each answer that the two answers share")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--attention", nargs="+", default=["sdpa"], choices=list(ATTENTION_BACKENDS))
    parser.add_argument("--pairs", type=int, default=4 if cuda else 2, help="pairs per step")
    parser.add_argument("--prompt-tokens", type=int, default=256 if cuda else 128)
    parser.add_argument("--answer-tokens", type=int, default=3072 if cuda else 1024)
    parser.add_argument("--repeats", type=int, default=5 if cuda else 3)
    parser.add_argument("--out", type=Path, help="JSON output path (default: a new file under benchmarks/results)")
    parser.add_argument("--toy", action="store_true", help="a toy model (hidden 32, 2 layers, vocabulary 1024): "
                        "runs the code path in seconds (benchmarks/gpu_check.py --dry-run); measures nothing")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    write_results(report, "train-", args.out)


if __name__ == "__main__":
    main()
