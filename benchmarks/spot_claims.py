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
3. **post-training**, the same pairs, steps and seeds for every method: ``spot_bco``, ``spot_bce``,
   ``dpo``, ``reward_sft``, ``sft`` on y+ (SFT+) and ``sft`` on the direct rewrites, with the old
   skill as the retain set (``--retain-data``: NLL and KL to the start while training). Each method
   first trains at every rate of ``Scale.post_lrs`` on the first seed; ``spot-fast-eval`` on
   validation additions picks its rate, and the other seeds train at that rate.
4. **evaluation**: ``spot-fast-eval`` on held-out additions (avg@k) and reversals, for the start model
   and every chosen run.
5. **report**: per method, the in-domain gain and the old-skill change against the start model
   (mean +- std over seeds); over the sweep, the implicit rewards and the retain KL at matched rates;
   and a verdict on each claim.

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

import claims_task as task
from common import RESULTS_DIR, device_name
from spot_fast.crash_safe import replaced_dir, write_file
from spot_fast.jsonl import write_jsonl_atomic

REPO = Path(__file__).resolve().parents[1]
METHODS = (  # label, objective, which pairs (minimal edits or direct rewrites)
    ("SPoT (spot_bco)", "spot_bco", "minimal"),
    ("SPoT-BCE (spot_bce)", "spot_bce", "minimal"),
    ("DPO", "dpo", "minimal"),
    ("Reward-SFT", "reward_sft", "minimal"),
    ("SFT+ (y+)", "sft", "minimal"),
    ("SFT (direct rewrites)", "sft", "direct"),
)
REASONING, OLD_SKILL = "addition", "reversal"
VALIDATION = f"{REASONING}-validation.jsonl"


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
    post_steps: int = 40
    post_batch: int = 8
    post_lrs: tuple = (3e-5, 1e-4, 3e-4)  # each method trains at the one of these that validates best
    beta: float = 0.1
    seeds: tuple = (0, 1, 2)
    eval_problems: int = 150
    validation_problems: int = 100   # held-out additions that choose each method's learning rate
    validation_samples: int = 2
    retain_examples: int = 100       # old-skill examples scored during post-training (forgetting signal)
    eval_samples: int = 4            # avg@k on the reasoning benchmark (the old skill: 1)
    max_new_tokens: int = 160
    temperature: float = 1.0         # sampling the learned distribution, slips included
    data_seed: int = 2026
    verdicts: bool = True            # False: the scale exercises the pipeline, its numbers are noise


FULL = Scale()
SMOKE = replace(FULL, hidden=32, layers=1, pretrain_steps=8, pretrain_batch=8, elicit_problems=8, gamma=1.0,
                post_steps=2, post_batch=2, post_lrs=(1e-4,), seeds=(0,), eval_problems=4, validation_problems=4,
                retain_examples=4, eval_samples=2, max_new_tokens=24, verdicts=False)


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


# ---- 1. data and start model ---------------------------------------------------------------------

def prompt(question):
    """The prompt of every stage: the question and the evaluator's instruction (``spot-fast-eval``
    appends the same instruction to a benchmark's bare question)."""
    return f"{question}\n\n{task.INSTRUCTION}"


def distinct_draws(rng, draw, count):
    """``count`` distinct values of ``draw(rng)``, in an order ``rng`` shuffles."""
    values = set()
    while len(values) < count:
        values.add(draw(rng))
    values = sorted(values)
    rng.shuffle(values)
    return values


def addition_problem(a, b, instructed):
    """A problems line for ``a + b``: its question with the instruction (for ``elicit``, which uses
    the question as the prompt) or bare (a benchmark: ``spot-fast-eval`` adds the instruction)."""
    question = task.addition_question(a, b)
    return {"id": f"add{a}+{b}", "question": prompt(question) if instructed else question, "answer": str(a + b)}


def make_data(scale, data):
    """The pre-training corpus, the elicitation problems, the benchmarks, the retain set and the
    validation problems, from ``scale.data_seed``; no problem held out of pre-training is in its corpus."""
    rng = random.Random(scale.data_seed)
    held_out = distinct_draws(rng, task.random_addends, scale.elicit_problems + scale.eval_problems)
    elicit, benchmark = held_out[:scale.elicit_problems], held_out[scale.elicit_problems:]
    reversals = distinct_draws(rng, task.random_reversal, scale.retain_examples + scale.eval_problems)
    retain, old_benchmark = reversals[:scale.retain_examples], reversals[scale.retain_examples:]
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

    # validation problems come last, from a generator of their own, so adding them left the rest as it was
    taken = {record["prompt"] for record in corpus} | {prompt(task.addition_question(a, b)) for a, b in held_out}
    validation, validation_rng = [], random.Random(scale.data_seed + 1)
    while len(validation) < scale.validation_problems:
        a, b = task.random_addends(validation_rng)
        if prompt(task.addition_question(a, b)) not in taken:
            taken.add(prompt(task.addition_question(a, b)))
            validation.append((a, b))

    write_jsonl_atomic(data / "pretrain.jsonl", corpus)
    write_jsonl_atomic(data / "problems.jsonl", [addition_problem(a, b, instructed=True) for a, b in elicit])
    write_jsonl_atomic(data / f"{REASONING}.jsonl", [addition_problem(a, b, instructed=False) for a, b in benchmark])
    write_jsonl_atomic(data / VALIDATION, [addition_problem(a, b, instructed=False) for a, b in validation])
    write_jsonl_atomic(data / f"{OLD_SKILL}.jsonl", [{"id": f"rev{n}", "question": task.reversal_question(n), "answer": str(r)}
                                                     for n, r in old_benchmark])
    write_jsonl_atomic(data / "retain.jsonl", [{"prompt": prompt(task.reversal_question(n)), "response": f"\\boxed{{{r}}}"}
                                               for n, r in retain])


def save_initial_model(scale, path):
    """The untrained model and its tokenizer, as a Hugging Face model directory."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    torch.manual_seed(scale.data_seed)
    tokenizer = task.char_tokenizer()
    model = Qwen3ForCausalLM(task.model_config(tokenizer, scale.hidden, scale.layers))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with replaced_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
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
    if not (data / VALIDATION).exists():
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
    """The minimal-edit pairs and the direct-rewrite pairs of the start model's errors (the stages
    resume on their own; a finished rectification, both pair files built, is not run again)."""
    rectify_cli = python("-m", "spot_fast.rectify")
    minimal, direct = work / "rectify-minimal", work / "rectify-direct"
    pairs = {"minimal": minimal / "pairs.jsonl", "direct": direct / "pairs.jsonl"}
    if all(path.exists() for path in pairs.values()):
        return pairs
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
    return pairs


# ---- 3. post-training ----------------------------------------------------------------------------

def run_name(objective, pairs, lr, seed):
    return f"{objective}-{pairs}-lr{lr:g}-s{seed}"


def train_method(scale, work, model, pairs, objective, which, lr, seed):
    """One post-training run (skipped when its final model exists); returns its directory."""
    name = run_name(objective, which, lr, seed)
    out = work / "runs" / name
    if not (out / "final").exists():
        retain = ["--retain-data", work / "data" / "retain.jsonl", "--retain-every", max(1, scale.post_steps // 4)]
        run(train_command(model, pairs[which], out, objective, scale.post_steps, scale.post_batch, lr, seed,
                          ["--beta", scale.beta, "--warmup-ratio", 0.1, "--overwrite", *retain]),
            work / "logs" / f"{name}.log")
    return out


def evaluate(scale, work, models, benchmarks, out):
    """``spot-fast-eval`` of ``models`` ({label: directory}) on ``benchmarks`` ({file: k}); returns
    {label: {benchmark name: avg@k}}. Not run again when ``out`` holds the results of these models."""
    results = out / "results.json"
    if results.exists() and {m["label"] for m in json.loads(results.read_text())["models"]} == set(models):
        return accuracies(json.loads(results.read_text()))
    arguments = [a for label, path in models.items() for a in ("--model", f"{label}={path}")]
    run(python("-m", "spot_fast.evaluate", *arguments, "--benchmarks", *benchmarks,
               "--samples", *(f"{Path(b).stem}={k}" for b, k in benchmarks.items()), "--output-dir", out,
               "--seed", scale.data_seed, *sampling_options(scale)),
        work / "logs" / f"{out.name}.log")
    return accuracies(json.loads(results.read_text()))


def accuracies(results):
    return {m["label"]: {name: b["avg"] for name, b in m["benchmarks"].items()} for m in results["models"]}


def choose_learning_rates(validation, names):
    """{method label: the learning rate whose run validated best}; ``names[label][lr]`` is the run's
    label in ``validation``. A tie goes to the smaller rate (the smaller change to the model)."""
    return {label: max(sorted(by_lr), key=lambda lr: validation[by_lr[lr]][Path(VALIDATION).stem])
            for label, by_lr in names.items()}


def post_train(scale, work, model, pairs):
    """Each method at each learning rate on the first seed, evaluated on the validation problems;
    then the other seeds at the rate that validated best. Returns (the learning rates chosen, the
    sweep by method and rate (``sweep_point``), {method label: the chosen runs' directories})."""
    sweep = {label: {lr: train_method(scale, work, model, pairs, objective, which, lr, scale.seeds[0])
                     for lr in scale.post_lrs}
             for label, objective, which in METHODS}
    names = {label: {lr: out.name for lr, out in by_lr.items()} for label, by_lr in sweep.items()}
    validation = evaluate(scale, work, {out.name: out / "final" for by_lr in sweep.values() for out in by_lr.values()},
                          {work / "data" / VALIDATION: scale.validation_samples}, work / "eval-validation")
    chosen = choose_learning_rates(validation, names)
    runs = {label: [train_method(scale, work, model, pairs, objective, which, chosen[label], seed) for seed in scale.seeds]
            for label, objective, which in METHODS}
    points = {label: {f"{lr:g}": sweep_point(scale, out, validation[out.name][Path(VALIDATION).stem])
                      for lr, out in by_lr.items()} for label, by_lr in sweep.items()}
    return chosen, points, runs


def sweep_point(scale, run_dir, validation_accuracy):
    """What one run of the sweep showed: validation accuracy, implicit rewards late in training, and
    the retain set's KL to the start at the end (the forgetting signal)."""
    records = read_metrics(run_dir)
    late = late_records(records, scale.post_steps)
    return {"validation": validation_accuracy, "chosen_reward_late": _mean_of(late, "rewards/chosen"),
            "rejected_reward_late": _mean_of(late, "rewards/rejected"), "retain_kl_end": records[-1].get("retain/kl")}


def test_evaluation(scale, work, model, runs):
    """The start model and every chosen run on the held-out reasoning and old-skill problems."""
    models = {"start": model, **{out.name: out / "final" for outs in runs.values() for out in outs}}
    return evaluate(scale, work, models, {work / "data" / f"{REASONING}.jsonl": scale.eval_samples,
                                          work / "data" / f"{OLD_SKILL}.jsonl": 1}, work / "eval")


# ---- 5. report -----------------------------------------------------------------------------------

def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def curve(records, key):
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def summarize(scale, accuracy, chosen, sweep, runs, pairs):
    """The table's numbers: per method, accuracies and their change from the start (mean, std over seeds)."""
    start = accuracy["start"]
    methods = []
    for label, objective, which in METHODS:
        names = [out.name for out in runs[label]]
        gains = [accuracy[n][REASONING] - start[REASONING] for n in names]
        changes = [accuracy[n][OLD_SKILL] - start[OLD_SKILL] for n in names]
        metrics = [read_metrics(out) for out in runs[label]]
        late = [r for records in metrics for r in late_records(records, scale.post_steps)]
        methods.append({
            "method": label, "objective": objective, "pairs": which, "runs": names,
            "learning_rate": chosen[label], "sweep": sweep[label],
            "reasoning": fmean(accuracy[n][REASONING] for n in names),
            "gain": fmean(gains), "gain_std": pstdev(gains),
            "old_skill": fmean(accuracy[n][OLD_SKILL] for n in names),
            "old_change": fmean(changes), "old_change_std": pstdev(changes),
            "retain_kl_end": _mean_of([records[-1] for records in metrics], "retain/kl"),
            "chosen_reward_late": _mean_of(late, "rewards/chosen"),
            "rejected_reward_late": _mean_of(late, "rewards/rejected"),
        })
    counted = {which: sum(1 for _ in open(path)) for which, path in pairs.items()}
    return {"scale": asdict(scale), "start": start, "pairs": counted, "methods": methods,
            "claims": claims({m["method"]: m for m in methods}, start, scale.verdicts)}


def late_records(records, steps):
    """The training records of the last quarter of the steps: their mean is the end of a noisy curve."""
    return [r for r in records if "loss" in r and r["step"] > 0.75 * steps]


def _mean_of(records, key):
    values = [r[key] for r in records if key in r]
    return fmean(values) if values else None


ACCURACY_BEHIND = {"gain": ("reasoning", REASONING), "old_change": ("old_skill", OLD_SKILL)}


def compare(name, a, b, key, label_a, label_b, start):
    """Claim ``name``: ``a[key]`` above ``b[key]`` (mean over seeds), and whether the difference is
    larger than the two spreads over seeds together (else the seeds cannot tell them apart).

    Not measurable (``reproduced`` None) when every accuracy behind the two values, the ``start``
    model's and every run's of both methods, is 0 (as at smoke scale), or every one is 1: the
    difference is then exactly 0 whatever the methods do, and no verdict can be read from it.
    (Accuracies lie in [0, 1], so a mean of 0 or 1 means every run scored that.)"""
    difference, spread = a[key] - b[key], a[key + "_std"] + b[key + "_std"]
    detail = (f"{a[key]:+.3f} +- {a[key + '_std']:.3f} ({label_a}) vs {b[key]:+.3f} +- {b[key + '_std']:.3f} "
              f"({label_b}): difference {difference:+.3f}, seed spread {spread:.3f}")
    field, benchmark = ACCURACY_BEHIND[key]
    accuracies = {start[benchmark], a[field], b[field]}
    if accuracies in ({0.0}, {1.0}):
        return {"claim": name, "reproduced": None, "beyond_seed_spread": None,
                "detail": f"every {benchmark} accuracy behind it is {accuracies.pop():g}: {detail}"}
    return {"claim": name, "reproduced": difference > 0, "beyond_seed_spread": abs(difference) > spread,
            "detail": detail}


def below_at_every_rate(name, a, b, key, label_a, label_b, below_zero=False):
    """Claim ``name``: ``a``'s sweep value ``key`` is below ``b``'s at every learning rate (and below
    zero too with ``below_zero``). Not measurable (``reproduced`` None) when every value is 0: nothing
    moved, and no verdict can be read from it."""
    rates = list(a["sweep"])
    held = all(a["sweep"][r][key] < b["sweep"][r][key] and (not below_zero or a["sweep"][r][key] < 0) for r in rates)
    pairs = ", ".join(f"{r}: {a['sweep'][r][key]:+.3g} vs {b['sweep'][r][key]:+.3g}" for r in rates)
    detail = f"{key} of {label_a} vs {label_b} at each learning rate (seed 0): {pairs}"
    values = [side["sweep"][r][key] for side in (a, b) for r in rates]
    if all(v == 0 for v in values):
        return {"claim": name, "reproduced": None, "beyond_seed_spread": None, "detail": f"every value is 0: {detail}"}
    return {"claim": name, "reproduced": held, "beyond_seed_spread": None, "detail": detail}


def claims(by_label, start, verdicts=True):
    """Each of the paper's claims checked on the summary: what was compared and whether it held
    (None: not measurable; always, without ``verdicts``, at a scale too small to measure anything).
    Accuracies compare the methods at their chosen rates over seeds, against the ``start`` model's;
    the reward and forgetting signals compare them at matched rates over the sweep."""
    spot, sft, dpo, direct = (by_label[k] for k in ("SPoT (spot_bco)", "SFT+ (y+)", "DPO", "SFT (direct rewrites)"))
    checked = _claims(spot, sft, dpo, direct, start)
    if verdicts:
        return checked
    return [{**c, "reproduced": None, "beyond_seed_spread": None, "detail": f"smoke scale, no verdict: {c['detail']}"}
            for c in checked]


def _claims(spot, sft, dpo, direct, start):
    return [
        compare("SPoT gains more in-domain accuracy than SFT on the same corrected data", spot, sft, "gain",
                "spot_bco", "SFT+", start),
        compare("SPoT loses less of the old skill than SFT (old-skill accuracy)", spot, sft, "old_change", "spot_bco",
                "SFT+", start),
        below_at_every_rate("SPoT loses less of the old skill than SFT (retain KL)", spot, sft, "retain_kl_end",
                            "spot_bco", "SFT+"),
        below_at_every_rate("DPO pushes the chosen reward down (its failure mode), more than SPoT", dpo, spot,
                            "chosen_reward_late", "DPO", "spot_bco", below_zero=True),
        compare("Minimal edits beat whole rewrites as SFT data (in-domain gain)", sft, direct, "gain", "SFT+",
                "SFT on rewrites", start),
        below_at_every_rate("Minimal edits beat whole rewrites as SFT data (retain KL)", sft, direct, "retain_kl_end",
                            "SFT+", "SFT on rewrites"),
    ]


def markdown(summary):
    s, machine = summary["scale"], summary["device"]
    lines = [
        "# SPoT claims on a controlled task", "",
        f"Column addition (reasoning) and digit reversal (old skill), a {s['layers']}-layer Qwen3 model "
        f"(hidden {s['hidden']}) with a character-level tokenizer pre-trained from scratch; "
        f"{summary['pairs']['minimal']} minimal-edit pairs (gamma {s['gamma']}) and {summary['pairs']['direct']} "
        f"direct rewrites of the same errors; {s['post_steps']} steps x {s['post_batch']} pairs for every method, at "
        f"the learning rate of {list(s['post_lrs'])} that scored best on {s['validation_problems']} validation "
        f"additions (avg@{s['validation_samples']}, seed {s['seeds'][0]}), seeds {list(s['seeds'])}. "
        f"Accuracy: avg@{s['eval_samples']} on "
        f"{s['eval_problems']} held-out additions and avg@1 on {s['eval_problems']} held-out reversals, sampled at "
        f"temperature {s['temperature']}. Ran on {machine['name']} ({machine['cpu_count']} cores) in "
        f"{summary['seconds'] / 60:.1f} min.", "",
        f"Start model: reasoning {summary['start'][REASONING]:.3f}, old skill {summary['start'][OLD_SKILL]:.3f}.", "",
        "| method | learning rate | reasoning | in-domain gain | old skill | old-skill change | retain KL (end) | "
        "chosen reward (last quarter) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in summary["methods"]:
        kl = "-" if m["retain_kl_end"] is None else f"{m['retain_kl_end']:.1e}"
        chosen = "-" if m["chosen_reward_late"] is None else f"{m['chosen_reward_late']:+.4f}"
        lines.append(f"| {m['method']} | {m['learning_rate']:g} | {m['reasoning']:.3f} | {m['gain']:+.3f} +- {m['gain_std']:.3f} | "
                     f"{m['old_skill']:.3f} | {m['old_change']:+.3f} +- {m['old_change_std']:.3f} | {kl} | {chosen} |")
    lines += ["", "| claim | reproduced | beyond the seeds' spread | measured |", "|---|---|---|---|"]
    for c in summary["claims"]:
        spread = {True: "yes", False: "no", None: "-"}[c["beyond_seed_spread"]]
        verdict = {True: "yes", False: "no", None: "not measurable"}[c["reproduced"]]
        lines.append(f"| {c['claim']} | {verdict} | {spread} | {c['detail']} |")
    rates = list(summary["methods"][0]["sweep"])
    lines += ["", f"The learning-rate sweep (seed {s['seeds'][0]}): validation accuracy / chosen reward over the last "
              "quarter of the steps / retain KL at the end, per rate:", "",
              "| method | " + " | ".join(rates) + " |", "|---|" + "---|" * len(rates)]
    for m in summary["methods"]:
        cells = []
        for r in rates:
            point = m["sweep"][r]
            reward = "-" if point["chosen_reward_late"] is None else f"{point['chosen_reward_late']:+.3f}"
            cells.append(f"{point['validation']:.3f} / {reward} / {point['retain_kl_end']:.1e}")
        lines.append(f"| {m['method']} | " + " | ".join(cells) + " |")
    stages = ", ".join(f"{stage} {seconds / 60:.1f}" for stage, seconds in summary["stage_seconds"].items())
    lines += ["", f"Minutes per stage: {stages}."]
    return "\n".join(lines) + "\n"


def plot(summary, work, path):
    """Gain and old-skill change per method (chosen rates, over seeds); the implicit rewards of the
    preference methods at the sweep's largest rate; the retain KL at the end of training by rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, rewards, kl) = plt.subplots(1, 3, figsize=(17, 4.8))
    methods, scale = summary["methods"], summary["scale"]
    x = range(len(methods))
    bars.bar([i - 0.2 for i in x], [m["gain"] for m in methods], 0.4, yerr=[m["gain_std"] for m in methods],
             label="in-domain gain")
    bars.bar([i + 0.2 for i in x], [m["old_change"] for m in methods], 0.4, yerr=[m["old_change_std"] for m in methods],
             label="old-skill change")
    bars.axhline(0, color="black", linewidth=0.8)
    bars.set_xticks(list(x), [f"{m['method']}\nlr {m['learning_rate']:g}" for m in methods], rotation=30, ha="right",
                    fontsize=7)
    bars.set_ylabel("accuracy change vs the start model")
    bars.set_title(f"held-out accuracy, mean +- std over {len(scale['seeds'])} seeds")
    bars.legend()
    top_rate, seed = max(scale["post_lrs"]), scale["seeds"][0]
    for m in methods:
        records = read_metrics(work / "runs" / run_name(m["objective"], m["pairs"], top_rate, seed))
        if m["pairs"] == "minimal" and any("rewards/rejected" in r for r in records):
            for key, style in (("rewards/chosen", "-"), ("rewards/rejected", "--")):
                rewards.plot(*curve(records, key), style, label=f"{m['method']} {key.split('/')[1]}")
        rates = [float(r) for r in m["sweep"]]
        kl.plot(rates, [max(p["retain_kl_end"], 1e-6) for p in m["sweep"].values()], "o-", label=m["method"])
    rewards.axhline(0, color="black", linewidth=0.8)
    rewards.set_title(f"implicit rewards at learning rate {top_rate:g} (seed {seed})")
    rewards.set_xlabel("step")
    rewards.legend(fontsize=6)
    kl.set(xscale="log", yscale="log", xlabel="learning rate",
           title="old skill: retain KL to the start at the end (<= 1e-6 drawn at 1e-6)")
    kl.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def device():
    """The machine, named as the other benchmarks' results name it (every stage runs on the CPU)."""
    import torch

    return {"name": device_name(torch.device("cpu")), "type": "cpu", "cpu_count": os.cpu_count()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=REPO / "outputs" / "spot_claims", help="stage outputs (resumable)")
    p.add_argument("--smoke", action="store_true", help="toy scale, results only in the work directory")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="where spot_claims.{json,md,png} go (full scale)")
    args = p.parse_args(argv)
    scale = SMOKE if args.smoke else FULL
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    timing = work / "stage_seconds.json"  # summed over invocations: a resumed run adds what it ran
    stage_seconds = json.loads(timing.read_text()) if timing.exists() else {}

    def timed(stage, function, *args):
        start = time.time()
        try:
            return function(*args)
        finally:  # an interrupted stage counts too: its finished work is kept
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + time.time() - start
            write_file(timing, json.dumps(stage_seconds))

    model = timed("start model", start_model, scale, work)
    pairs = timed("rectification", rectify, scale, work, model)
    chosen, sweep, runs = timed("post-training", post_train, scale, work, model, pairs)
    accuracy = timed("evaluation", test_evaluation, scale, work, model, runs)
    summary = summarize(scale, accuracy, chosen, sweep, runs, pairs)
    seconds = sum(stage_seconds.values())
    summary.update({"seconds": seconds, "stage_seconds": stage_seconds, "device": device()})
    out = work if args.smoke else args.results
    out.mkdir(parents=True, exist_ok=True)
    write_file(out / "spot_claims.json", json.dumps(summary, indent=2) + "\n")
    write_file(out / "spot_claims.md", markdown(summary))
    plot(summary, work, out / "spot_claims.png")
    print(markdown(summary))
    print(f"written: {out / 'spot_claims.json'}, .md, .png")


if __name__ == "__main__":
    main()
