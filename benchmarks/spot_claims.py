r"""The SPoT claims on a task we control: pre-train, rectify, post-train six ways, evaluate, report.

``python benchmarks/spot_claims.py`` (or ``make claims``) runs the whole experiment on a CPU and writes
``benchmarks/results/spot_claims.{json,md,png}``; ``--smoke`` runs the same pipeline at toy scale
into its work directory only (the test suite runs it). The task, its tokenizer, model and Oracles are
in ``claims_task.py``. Every stage is a command a user would run, printed as it starts:

1. **start model**: a small Qwen3 model and a character-level tokenizer built from configs
   (``claims_task``), pre-trained from scratch with the trainer (``--loss sft``) on a corpus of column
   additions (a share of them with one arithmetic slip) and digit reversals (the old skill).
2. **rectification**: ``spot-fast-rectify elicit`` samples the start model on held-out additions;
   ``correct`` with the minimal-edit Oracle (``claims_task:minimal_edit``), ``verify`` (the paper's
   gamma 0.6) and ``build`` give the SPoT pairs; the same errors corrected by the rewriting Oracle
   (``claims_task:rewrite``) and kept whatever their change ratio give the "direct" data.
3. **post-training**, the same pairs, steps, learning rate and seeds for every method: ``spot_bco``,
   ``spot_bce``, ``dpo``, ``reward_sft``, ``sft`` on y+ (SFT+) and ``sft`` on the direct rewrites,
   with the old skill as the retain set (``--retain-data``: NLL and KL to the start while training).
4. **evaluation**: ``spot-fast-eval`` on held-out additions (avg@k) and reversals, for the start model
   and every run.
5. **report**: per method, the in-domain gain and the old-skill change against the start model
   (mean +- std over seeds), the implicit reward curves and the retain KL, and a verdict on each claim.

Each stage skips the work its outputs already hold, so an interrupted run resumes where it stopped.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import fmean, pstdev

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import claims_task as task  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
METHODS = (  # label, objective, which pairs (minimal edits or direct rewrites)
    ("SPoT (spot_bco)", "spot_bco", "minimal"),
    ("SPoT-BCE (spot_bce)", "spot_bce", "minimal"),
    ("DPO", "dpo", "minimal"),
    ("Reward-SFT", "reward_sft", "minimal"),
    ("SFT+ (y+)", "sft", "minimal"),
    ("SFT (direct rewrites)", "sft", "direct"),
)
REASONING, OLD_SKILL = "addition", "reversal"


@dataclass(frozen=True)
class Scale:
    """Sizes and settings of one experiment; ``FULL`` is the committed one, ``SMOKE`` the test's."""
    hidden: int = 128
    layers: int = 4
    pretrain_steps: int = 1200
    pretrain_batch: int = 16
    pretrain_lr: float = 2e-3
    slip_rate: float = 0.4           # share of pre-training solutions with one arithmetic slip
    reversal_share: float = 0.3      # share of pre-training examples that are reversals (old skill)
    elicit_problems: int = 400
    gamma: float = 0.6               # largest change ratio verify keeps for the minimal edits
    post_steps: int = 60
    post_batch: int = 8
    post_lr: float = 3e-4
    beta: float = 0.1
    seeds: tuple = (0, 1, 2)
    eval_problems: int = 150
    eval_samples: int = 4            # avg@k on the reasoning benchmark (the old skill: 1)
    max_new_tokens: int = 160
    temperature: float = 1.0         # sampling the learned distribution, slips included
    data_seed: int = 2026


FULL = Scale()
SMOKE = replace(FULL, hidden=32, layers=1, pretrain_steps=8, pretrain_batch=8, elicit_problems=8, gamma=1.0,
                post_steps=2, post_batch=2, seeds=(0,), eval_problems=4, eval_samples=2, max_new_tokens=24)


# ---- running commands ----------------------------------------------------------------------------

def run(command, log):
    """Runs ``command`` (printed first) with benchmarks/ importable (the Oracles), output to ``log``."""
    print("$ " + " ".join(map(str, command)), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH")]))}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        finished = subprocess.run([str(c) for c in command], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        tail = "".join(open(log).readlines()[-30:])
        raise RuntimeError(f"{command[1:4]} failed with exit status {finished.returncode}; last lines of {log}:\n{tail}")


def python(*args):
    return [sys.executable, *args]


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


# ---- 1. data and start model ---------------------------------------------------------------------

def prompt(question):
    """The prompt of every stage: the question and the evaluator's instruction (``spot-fast-eval``
    appends the same instruction to a benchmark's bare question)."""
    return f"{question}\n\n{task.INSTRUCTION}"


def make_data(scale, data):
    """The pre-training corpus, the elicitation problems, the benchmarks and the retain set, from
    ``scale.data_seed``; problems held out of pre-training are never in its corpus."""
    rng = random.Random(scale.data_seed)
    held_out = set()
    while len(held_out) < scale.elicit_problems + scale.eval_problems:
        held_out.add(task.random_addends(rng))
    held_out = sorted(held_out)
    rng.shuffle(held_out)
    elicit, benchmark = held_out[:scale.elicit_problems], held_out[scale.elicit_problems:]
    reversals = sorted({task.random_reversal(rng) for _ in range(2 * scale.eval_problems)})[:2 * scale.eval_problems]
    rng.shuffle(reversals)
    retain, old_benchmark = reversals[:scale.eval_problems], reversals[scale.eval_problems:]
    held_out_reversals = {n for n, _ in reversals}

    corpus = []
    held = set(held_out)
    while len(corpus) < scale.pretrain_steps * scale.pretrain_batch:
        if rng.random() < scale.reversal_share:
            number, reversed_number = task.random_reversal(rng)
            if number not in held_out_reversals:
                corpus.append({"prompt": prompt(task.reversal_question(number)), "response": f"\\boxed{{{reversed_number}}}"})
            continue
        a, b = task.random_addends(rng)
        if (a, b) in held:
            continue
        opening = rng.randrange(len(task.OPENINGS))
        text = (task.slipped_solution(a, b, opening, rng) if rng.random() < scale.slip_rate
                else task.addition_solution(a, b, opening))
        corpus.append({"prompt": prompt(task.addition_question(a, b)), "response": text})
    write_jsonl(data / "pretrain.jsonl", corpus)
    write_jsonl(data / "problems.jsonl", [{"id": f"add{a}+{b}", "question": prompt(task.addition_question(a, b)),
                                           "answer": str(a + b)} for a, b in elicit])
    write_jsonl(data / f"{REASONING}.jsonl", [{"id": f"add{a}+{b}", "question": task.addition_question(a, b),
                                               "answer": str(a + b)} for a, b in benchmark])
    write_jsonl(data / f"{OLD_SKILL}.jsonl", [{"id": f"rev{n}", "question": task.reversal_question(n), "answer": str(r)}
                                              for n, r in old_benchmark])
    write_jsonl(data / "retain.jsonl", [{"prompt": prompt(task.reversal_question(n)), "response": f"\\boxed{{{r}}}"}
                                        for n, r in retain])


def save_initial_model(scale, path):
    """The untrained model and its tokenizer, as a Hugging Face model directory."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    torch.manual_seed(scale.data_seed)
    tokenizer = task.char_tokenizer()
    model = Qwen3ForCausalLM(task.model_config(tokenizer, scale.hidden, scale.layers))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, path)
    return sum(p.numel() for p in model.parameters())


def train_command(model, data, output_dir, loss, steps, batch, lr, seed, extra=()):
    """The trainer's command: ``steps`` optimizer steps of ``batch`` pairs (as many epochs as that takes).
    Rows are padded, not packed: on a CPU, attention over one packed row costs the square of the
    whole micro-batch's length."""
    return python("spot_fast/train.py", "--model", model, "--data", data, "--output-dir", output_dir,
                  "--loss", loss, "--max-steps", steps, "--per-device-batch", batch, "--grad-accum", 1,
                  "--learning-rate", lr, "--seed", seed, "--epochs", 1000, "--pack", "off", "--report-to", "none",
                  *extra)


def start_model(scale, work):
    """Data, the initial model and its pre-training; returns the start model's directory."""
    data, final = work / "data", work / "pretrain" / "final"
    if not (data / "retain.jsonl").exists():
        make_data(scale, data)
    if not (work / "init").exists():
        print(f"initial model: {save_initial_model(scale, work / 'init'):,} parameters")
    if not final.exists():  # resumes from the last checkpoint of an interrupted pre-training
        start = ["--resume", "latest"] if any((work / "pretrain").glob("checkpoint-*")) else ["--overwrite"]
        run(train_command(work / "init", data / "pretrain.jsonl", work / "pretrain", "sft", scale.pretrain_steps,
                          scale.pretrain_batch, scale.pretrain_lr, scale.data_seed,
                          ["--save-every", max(1, scale.pretrain_steps // 10), "--keep-last", 1, *start]),
            work / "logs" / "pretrain.log")
    return final


# ---- 2. rectification ----------------------------------------------------------------------------

def sampling_options(scale):
    return ["--temperature", scale.temperature, "--top-p", 1.0, "--max-new-tokens", scale.max_new_tokens,
            "--batch-size", 64]


def rectify(scale, work, model):
    """The minimal-edit pairs and the direct-rewrite pairs of the start model's errors."""
    rectify_cli = python("-m", "spot_fast.rectify")
    minimal, direct = work / "rectify-minimal", work / "rectify-direct"
    log = work / "logs" / "rectify.log"
    run(rectify_cli + ["elicit", "--workdir", minimal, "--problems", work / "data" / "problems.jsonl",
                       "--model", model, "--seed", scale.data_seed, *sampling_options(scale)], log)
    direct.mkdir(exist_ok=True)
    for name in ("results.jsonl", "errors.jsonl"):  # the same errors, corrected by the other Oracle
        (direct / name).write_bytes((minimal / name).read_bytes())
    for workdir, oracle, gamma in ((minimal, "minimal_edit", scale.gamma), (direct, "rewrite", 1.0)):
        run(rectify_cli + ["correct", "--workdir", workdir, "--oracle-callable", f"claims_task:{oracle}"], log)
        run(rectify_cli + ["verify", "--workdir", workdir, "--tokenizer", model, "--gamma", gamma], log)
        run(rectify_cli + ["build", "--workdir", workdir, "--tokenizer", model], log)
    return {"minimal": minimal / "pairs.jsonl", "direct": direct / "pairs.jsonl"}


# ---- 3. post-training ----------------------------------------------------------------------------

def run_name(objective, pairs, seed):
    return f"{objective}-{pairs}-s{seed}"


def post_train(scale, work, model, pairs):
    """Every method on every seed; returns {run name: run directory}."""
    runs = {}
    for _, objective, which in METHODS:
        for seed in scale.seeds:
            name = run_name(objective, which, seed)
            out = runs[name] = work / "runs" / name
            if (out / "final").exists():
                continue
            retain = ["--retain-data", work / "data" / "retain.jsonl", "--retain-every", max(1, scale.post_steps // 10)]
            run(train_command(model, pairs[which], out, objective, scale.post_steps, scale.post_batch, scale.post_lr,
                              seed, ["--beta", scale.beta, "--warmup-ratio", 0.1, "--overwrite", *retain]),
                work / "logs" / f"{name}.log")
    return runs


# ---- 4. evaluation -------------------------------------------------------------------------------

def evaluate(scale, work, model, runs):
    """``spot-fast-eval`` of the start model and every run's final model; returns its results."""
    out = work / "eval"
    models = ["--model", f"start={model}"]
    for name, run_dir in runs.items():
        models += ["--model", f"{name}={run_dir / 'final'}"]
    run(python("-m", "spot_fast.evaluate", *models, "--benchmarks", work / "data" / f"{REASONING}.jsonl",
               work / "data" / f"{OLD_SKILL}.jsonl", "--samples", f"{REASONING}={scale.eval_samples}", f"{OLD_SKILL}=1",
               "--output-dir", out, "--seed", scale.data_seed, *sampling_options(scale)),
        work / "logs" / "eval.log")
    return json.loads((out / "results.json").read_text())


# ---- 5. report -----------------------------------------------------------------------------------

def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def curve(records, key):
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def summarize(scale, evaluation, runs, pairs):
    """The table's numbers: per method, accuracies and their change from the start (mean, std over seeds)."""
    accuracy = {m["label"]: {name: b["avg"] for name, b in m["benchmarks"].items()} for m in evaluation["models"]}
    start = accuracy["start"]
    methods = []
    for label, objective, which in METHODS:
        names = [run_name(objective, which, seed) for seed in scale.seeds]
        gains = [accuracy[n][REASONING] - start[REASONING] for n in names]
        changes = [accuracy[n][OLD_SKILL] - start[OLD_SKILL] for n in names]
        last = [read_metrics(runs[n])[-1] for n in names]
        methods.append({
            "method": label, "objective": objective, "pairs": which, "runs": names,
            "reasoning": fmean(accuracy[n][REASONING] for n in names),
            "gain": fmean(gains), "gain_std": pstdev(gains),
            "old_skill": fmean(accuracy[n][OLD_SKILL] for n in names),
            "old_change": fmean(changes), "old_change_std": pstdev(changes),
            "final_retain_kl": fmean(r["retain/kl"] for r in last if "retain/kl" in r) if any("retain/kl" in r for r in last) else None,
            "final_chosen_reward": _mean_of(last, "rewards/chosen"),
            "final_rejected_reward": _mean_of(last, "rewards/rejected"),
        })
    counted = {which: sum(1 for _ in open(path)) for which, path in pairs.items()}
    return {"scale": asdict(scale), "start": start, "pairs": counted, "methods": methods,
            "claims": claims({m["method"]: m for m in methods})}


def _mean_of(records, key):
    values = [r[key] for r in records if key in r]
    return fmean(values) if values else None


def claims(by_label):
    """Each of the paper's claims, checked on the summary: what was compared and whether it held."""
    spot, sft, dpo, direct = (by_label[k] for k in ("SPoT (spot_bco)", "SFT+ (y+)", "DPO", "SFT (direct rewrites)"))

    def verdict(name, held, detail):
        return {"claim": name, "reproduced": bool(held), "detail": detail}

    return [
        verdict("SPoT gains more in-domain accuracy than SFT on the same corrected data", spot["gain"] > sft["gain"],
                f"gain {spot['gain']:+.3f} +- {spot['gain_std']:.3f} (spot_bco) vs {sft['gain']:+.3f} +- {sft['gain_std']:.3f} (SFT+)"),
        verdict("SPoT loses less of the old skill than SFT", spot["old_change"] > sft["old_change"],
                f"old-skill change {spot['old_change']:+.3f} +- {spot['old_change_std']:.3f} (spot_bco) vs "
                f"{sft['old_change']:+.3f} +- {sft['old_change_std']:.3f} (SFT+)"),
        verdict("DPO pushes the chosen reward down (its failure mode)",
                dpo["final_chosen_reward"] is not None and dpo["final_chosen_reward"] < 0,
                f"DPO's last logged rewards/chosen {dpo['final_chosen_reward']:+.4f}, rewards/rejected "
                f"{dpo['final_rejected_reward']:+.4f} (mean over seeds)"),
        verdict("Minimal edits beat whole rewrites as SFT data (in-domain gain)", sft["gain"] > direct["gain"],
                f"gain {sft['gain']:+.3f} (SFT+) vs {direct['gain']:+.3f} (SFT on direct rewrites); old-skill change "
                f"{sft['old_change']:+.3f} vs {direct['old_change']:+.3f}"),
    ]


def markdown(summary, seconds, device):
    s = summary["scale"]
    lines = [
        "# SPoT claims on a controlled task", "",
        f"Column addition (reasoning) and digit reversal (old skill), a {s['layers']}-layer Qwen3 model "
        f"(hidden {s['hidden']}) with a character-level tokenizer pre-trained from scratch; "
        f"{summary['pairs']['minimal']} minimal-edit pairs (gamma {s['gamma']}) and {summary['pairs']['direct']} "
        f"direct rewrites of the same errors; {s['post_steps']} steps x {s['post_batch']} pairs at learning rate "
        f"{s['post_lr']} for every method, seeds {list(s['seeds'])}. Accuracy: avg@{s['eval_samples']} on "
        f"{s['eval_problems']} held-out additions and avg@1 on {s['eval_problems']} held-out reversals, sampled at "
        f"temperature {s['temperature']}. Ran on {device} in {seconds / 60:.1f} min.", "",
        f"Start model: reasoning {summary['start'][REASONING]:.3f}, old skill {summary['start'][OLD_SKILL]:.3f}.", "",
        "| method | reasoning | in-domain gain | old skill | old-skill change | retain KL (end) | chosen reward (end) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in summary["methods"]:
        kl = "-" if m["final_retain_kl"] is None else f"{m['final_retain_kl']:.4f}"
        chosen = "-" if m["final_chosen_reward"] is None else f"{m['final_chosen_reward']:+.4f}"
        lines.append(f"| {m['method']} | {m['reasoning']:.3f} | {m['gain']:+.3f} +- {m['gain_std']:.3f} | "
                     f"{m['old_skill']:.3f} | {m['old_change']:+.3f} +- {m['old_change_std']:.3f} | {kl} | {chosen} |")
    lines += ["", "| claim | reproduced | measured |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {'yes' if c['reproduced'] else 'no'} | {c['detail']} |" for c in summary["claims"]]
    return "\n".join(lines) + "\n"


def plot(summary, runs, path):
    """Gain vs old-skill change per method; the implicit rewards of the preference methods; retain KL."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, rewards, kl) = plt.subplots(1, 3, figsize=(17, 4.8))
    methods = summary["methods"]
    x = range(len(methods))
    bars.bar([i - 0.2 for i in x], [m["gain"] for m in methods], 0.4, yerr=[m["gain_std"] for m in methods], label="in-domain gain")
    bars.bar([i + 0.2 for i in x], [m["old_change"] for m in methods], 0.4, yerr=[m["old_change_std"] for m in methods],
             label="old-skill change")
    bars.axhline(0, color="black", linewidth=0.8)
    bars.set_xticks(list(x), [m["method"] for m in methods], rotation=30, ha="right", fontsize=8)
    bars.set_ylabel("accuracy change vs start")
    bars.legend()
    for m in methods:
        records = [read_metrics(runs[n]) for n in m["runs"]]
        for key, style in (("rewards/chosen", "-"), ("rewards/rejected", "--")):
            if m["pairs"] == "minimal" and all(any(key in r for r in rs) for rs in records):
                steps, _ = curve(records[0], key)
                mean = [fmean(v) for v in zip(*(curve(rs, key)[1] for rs in records))]
                rewards.plot(steps[:len(mean)], mean, style, label=f"{m['method']} {key.split('/')[1]}")
        if all(any("retain/kl" in r for r in rs) for rs in records):
            steps, _ = curve(records[0], "retain/kl")
            kl.plot(steps, [fmean(v) for v in zip(*(curve(rs, "retain/kl")[1] for rs in records))], label=m["method"])
    rewards.set_title("implicit rewards (mean over seeds)")
    rewards.set_xlabel("step")
    rewards.legend(fontsize=6)
    kl.set_title("old skill: retain KL to the start")
    kl.set_xlabel("step")
    kl.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def device_name():
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=REPO / "outputs" / "spot_claims", help="stage outputs (resumable)")
    p.add_argument("--smoke", action="store_true", help="toy scale, results only in the work directory")
    p.add_argument("--results", type=Path, default=RESULTS, help="where spot_claims.{json,md,png} go (full scale)")
    args = p.parse_args(argv)
    scale = SMOKE if args.smoke else FULL
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    began = time.time()
    model = start_model(scale, work)
    pairs = rectify(scale, work, model)
    runs = post_train(scale, work, model, pairs)
    evaluation = evaluate(scale, work, model, runs)
    summary = summarize(scale, evaluation, runs, pairs)
    seconds, device = time.time() - began, device_name()
    summary.update({"seconds": seconds, "device": device})
    out = work if args.smoke else args.results
    out.mkdir(parents=True, exist_ok=True)
    (out / "spot_claims.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "spot_claims.md").write_text(markdown(summary, seconds, device))
    plot(summary, runs, out / "spot_claims.png")
    print(markdown(summary, seconds, device))
    print(f"written: {out / 'spot_claims.json'}, .md, .png")


if __name__ == "__main__":
    main()
