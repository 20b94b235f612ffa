"""Command line: ``spot-fast-eval --model [LABEL=]DIR ... [--checkpoints RUN_DIR] [--benchmarks FILE ...]``
(or ``python -m spot_fast.evaluate``); see ``spot_fast.evaluate`` and ``--help``.

Exit status: 0 done, 2 bad input or options, 130 interrupted (finished samples are saved; the same
command resumes).
"""
import argparse
import logging
import sys
from pathlib import Path

from spot_fast.cli import ArgumentParser
from spot_fast.paths import check_output_dir
from spot_fast.sampling.settings import add_sampling_arguments, positive_int, recorded_settings

PROG = "spot-fast-eval"
BUNDLED_BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "assets" / "benchmarks").glob("*.jsonl"))


def samples_per_benchmark(values, names):
    """``--samples K [NAME=K ...]`` -> ``{benchmark name: k}`` (K, or 1, for every benchmark not named)."""
    default, overrides = 1, {}
    for value in values:
        name, sep, k = value.rpartition("=")
        try:
            k = positive_int(k)
        except (ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"--samples {value!r}: expected K or NAME=K with K a positive integer") from None
        if not sep:
            default = k
        elif name not in names:
            raise ValueError(f"--samples {value!r}: no benchmark named {name!r} (have: {', '.join(names)})")
        else:
            overrides[name] = k
    return {name: overrides.get(name, default) for name in names}


EXAMPLES = """examples:
  # the rectification demo's trained model (README) on the bundled tiny benchmarks, CPU
  .venv/bin/spot-fast-eval --model spot=outputs/spot-rect/final --samples 2 --max-new-tokens 64 --output-dir runs/eval-demo
  # base against trained, several repetitions on a GPU
  .venv/bin/spot-fast-eval --model base=Qwen/Qwen3-8B --model spot=runs/qwen3-8b-spot/final --backend vllm \\
      --benchmarks data/math500.jsonl --samples 5
  # every checkpoint of a training run: accuracy against the step
  .venv/bin/spot-fast-eval --checkpoints runs/qwen3-8b-spot --benchmarks data/math500.jsonl --samples 5"""


def parser():
    p = ArgumentParser(prog=PROG, description="Evaluate models on benchmarks: avg@k +- std, pass@k, "
                                "response length, truncation; results.json, results.md and plots.", epilog=EXAMPLES)
    what = p.add_argument_group("models and benchmarks")
    what.add_argument("--model", action="append", default=[], metavar="[LABEL=]PATH",
                      help="a model directory, hub id or builtin:tiny-qwen3; repeat to compare models (default: none)")
    what.add_argument("--checkpoints", metavar="RUN_DIR",
                      help="evaluate every checkpoint-<step> and final of a training run; plot accuracy by step")
    what.add_argument("--benchmarks", nargs="+", type=Path, default=BUNDLED_BENCHMARKS, metavar="FILE",
                      help="benchmark JSONL files (default: the bundled tiny benchmarks)")
    what.add_argument("--samples", nargs="+", default=["1"], metavar="K|NAME=K",
                      help="repetitions per problem: K for all (default 1), NAME=K for one benchmark (e.g. 5 aime24=16)")
    what.add_argument("--limit", type=positive_int, help="use only the first N problems of each benchmark (default: all)")
    what.add_argument("--output-dir", type=Path, default=Path("eval"), help="where results and samples go")
    add_sampling_arguments(p, max_new_tokens=32768)
    return p


def run(args):
    from spot_fast.evaluate.benchmark_files import read_benchmarks
    from spot_fast.evaluate.results import write_reports
    from spot_fast.evaluate.run import check_unique_labels, checkpoint_models, evaluate_model, parse_model
    from spot_fast.models import BUILTIN_MODEL
    from spot_fast.preflight import check_hub_reachable
    from spot_fast.sampling.generation import generator_loader

    models = [parse_model(text, BUILTIN_MODEL) for text in args.model]
    if args.checkpoints:
        models += checkpoint_models(args.checkpoints)
    if not models:
        raise ValueError(f"nothing to evaluate: give --model (e.g. --model {BUILTIN_MODEL}) or --checkpoints")
    check_unique_labels(models)
    benchmarks = read_benchmarks(args.benchmarks, limit=args.limit)
    samples = samples_per_benchmark(args.samples, [b.name for b in benchmarks])
    check_output_dir("--output-dir", args.output_dir)
    for model in models:
        check_hub_reachable("--model", model.path)
    settings = recorded_settings(args)
    results = {"settings": {**settings, "samples": samples}, "models": []}
    for model in models:
        metrics = evaluate_model(model, benchmarks, samples, args.output_dir, generator_loader(args, model.path),
                                 settings, batch_size=args.batch_size, seed=args.seed)
        results["models"].append({"label": model.label, "model": model.path, "step": model.step,
                                  "benchmarks": metrics})
    return results, write_reports(args.output_dir, results)


def main(argv=None):
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        results, written = run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished samples are saved, run the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:  # bad input or options (InputError is a ValueError)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    from spot_fast.evaluate.results import markdown

    print(markdown(results), end="")
    print("written: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
