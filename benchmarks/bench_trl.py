"""TRL's DPO training step with its own fused LM head and with spot_kernels' (``SpotDPOTrainer``), side
by side in one process, at the Qwen3 vocabulary (151936).

Both trainers are TRL 1.16's ``DPOTrainer`` on the same model (a Qwen3-architecture model built from a
config where it runs, seeded: ``bench_train.py``'s, Qwen3-1.7B's shape on CUDA, on the CPU a small body
so the head dominates; ``--toy``: a tiny one, for ``gpu_check.py --dry-run``), the same reference model and the same
batch of pairs (bundled answers concatenated to ``--answer-tokens``). One step is TRL's
``training_step``: policy and reference forwards, the loss, the backward (no optimizer step: it is
the same for both). Reported per trainer:
- time: median wall time of ``--repeats`` steps after one warm-up, the two trainers alternating;
- workspace: peak memory during one step minus the memory held just before it. On GPU,
  ``torch.cuda.max_memory_allocated``; on CPU, the peak resident set size (VmHWM of /proc/self/status,
  reset through /proc/self/clear_refs before the step), with glibc told to return every allocation of
  128 KiB or more to the system when freed (``MALLOC_MMAP_THRESHOLD_``, set by re-executing this script),
  so that one trainer's freed tiles do not hide in the heap for the next.

Writes ``results/trl-dpo-<device>-<UTC time>.json`` (or ``--out``) and prints a table.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

MMAP_THRESHOLD = "131072"
if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD and sys.platform.startswith("linux"):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import Qwen3ForCausalLM  # noqa: E402

from bench_train import SEED, model_config  # noqa: E402
from common import device_name, proc_status_bytes, reset_peak_resident, write_results  # noqa: E402
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_tokenizer  # noqa: E402
from spot_kernels.trl_integration import SpotDPOTrainer  # noqa: E402

MIB = 2 ** 20
TRAINERS = {"trl": trl.DPOTrainer, "spot_kernels": SpotDPOTrainer}


def pairs(tokenizer, count, answer_tokens):
    """``count`` pairs whose answers are bundled answers concatenated to about ``answer_tokens`` tokens."""
    with open(ASSETS / "pairs.jsonl") as lines:
        rows = [json.loads(line) for line in lines]

    def answer(start, field):
        text, index = "", start
        while len(tokenizer(text)["input_ids"]) < answer_tokens:
            text += rows[index % len(rows)][field] + "\n"
            index += 1
        return text

    return Dataset.from_list([{"prompt": rows[i]["question"], "chosen": answer(i, "gemini_corrected_answer"),
                               "rejected": answer(i, "original_answer")} for i in range(count)])


def build_trainer(name, config, dataset, tokenizer, device, out_dir):
    def model():
        torch.manual_seed(SEED)
        with torch.device(device):
            return Qwen3ForCausalLM(config)

    args = trl.DPOConfig(output_dir=str(out_dir / name), per_device_train_batch_size=len(dataset), max_length=None,
                         report_to=[], use_cpu=device.type == "cpu", bf16=False, gradient_checkpointing=False,
                         disable_tqdm=True, dataloader_num_workers=0)
    trainer = TRAINERS[name](model=model(), ref_model=model(), args=args, train_dataset=dataset,
                             processing_class=tokenizer)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.current_gradient_accumulation_steps = 1  # set by train(), which is not run here
    trainer.model.train()
    return trainer, inputs


def step(trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    return float(trainer.training_step(trainer.model, inputs))


def wall_ms(trainer, inputs, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = step(trainer, inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3, loss


def workspace_bytes(trainer, inputs, device):
    trainer.model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        step(trainer, inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    reset_peak_resident()
    baseline = proc_status_bytes("VmRSS")
    step(trainer, inputs)
    return proc_status_bytes("VmHWM") - baseline


def run(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    config = model_config(device, toy=args.toy)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    dataset = pairs(tokenizer, args.pairs, args.answer_tokens)
    out_dir = Path(args.scratch)
    built = {name: build_trainer(name, config, dataset, tokenizer, device, out_dir) for name in TRAINERS}
    completion_tokens = int(built["trl"][1]["completion_mask"][:, 1:].sum())
    times = {name: [] for name in TRAINERS}
    losses = {}
    for name, (trainer, inputs) in built.items():
        losses[name] = step(trainer, inputs)  # warm-up
    for _ in range(args.repeats):
        for name, (trainer, inputs) in built.items():
            times[name].append(wall_ms(trainer, inputs, device)[0])
    memory = {name: workspace_bytes(trainer, inputs, device) for name, (trainer, inputs) in built.items()}
    results = [{"trainer": name, "step_ms": sorted(times[name])[len(times[name]) // 2], "step_ms_all": times[name],
                "workspace_mib": memory[name] / MIB, "loss": losses[name]} for name in TRAINERS]
    return {"device": {"name": device_name(device), "type": device.type, "threads": torch.get_num_threads()},
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "model": {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                       "vocab_size", "tie_word_embeddings")},
            "dtype": "fp32", "pairs": args.pairs, "rows": 2 * args.pairs,
            "tokens": int(built["trl"][1]["attention_mask"].sum()), "completion_tokens": completion_tokens,
            "repeats": args.repeats, "memory_source": "torch.cuda.max_memory_allocated" if device.type == "cuda"
            else "VmHWM - VmRSS before the step (MALLOC_MMAP_THRESHOLD_=131072)", "results": results}


def print_table(report):
    print(f"TRL {report['trl']} DPO step on {report['device']['name']} ({report['device']['threads']} threads): "
          f"{report['rows']} rows, {report['tokens']} tokens ({report['completion_tokens']} completion), "
          f"vocab {report['model']['vocab_size']}, hidden {report['model']['hidden_size']}")
    print(f"{'LM head':<14} {'step ms':>10} {'workspace MiB':>14} {'loss':>10}")
    for row in report["results"]:
        print(f"{row['trainer']:<14} {row['step_ms']:>10.0f} {row['workspace_mib']:>14.0f} {row['loss']:>10.6f}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="pairs in the batch (default 2)")
    parser.add_argument("--answer-tokens", type=int, default=256, help="tokens per answer, about (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per trainer (default 3)")
    parser.add_argument("--scratch", default="/tmp/bench_trl", help="the trainers' output_dir (nothing is saved)")
    parser.add_argument("--out", type=Path, help="result JSON (default results/trl-dpo-<device>-<UTC time>.json)")
    parser.add_argument("--toy", action="store_true", help="a tiny model: runs the code path in seconds "
                        "(benchmarks/gpu_check.py --dry-run); measures nothing")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    write_results(report, "trl-dpo-", args.out)


if __name__ == "__main__":
    main()
