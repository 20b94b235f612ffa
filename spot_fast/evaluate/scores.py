"""Accuracy over k repetitions: avg@k with its spread across repetitions, and unbiased pass@k.

For a benchmark of n problems, each answered k times (repetition j is the j-th sample of every
problem), with ``correct[i][j]`` the grade of problem i's sample j:

- run accuracy ``acc_j = mean_i correct[i][j]``; **avg@k** ``= mean_j acc_j`` (the mean over all n*k
  samples) and **std** ``= sqrt(mean_j (acc_j - avg@k)^2)``, the population standard deviation of the
  k run accuracies (0 for k = 1);
- **pass@m** for m <= k, the unbiased estimator of Chen et al. (2021): with ``c_i`` right samples of
  problem i, ``mean_i 1 - C(k - c_i, m) / C(k, m)`` (the chance that m samples drawn without
  replacement from the k include a right one); reported for m = 1, 2, 4, ... below k and for k;
- mean response length in generated tokens (end token included), the fraction of samples cut at the
  token limit (truncation rate), and the fraction with no boxed answer.
"""
from collections import defaultdict
from math import comb
from statistics import fmean, pstdev


def pass_at_k(n, c, k):
    """``1 - C(n - c, k) / C(n, k)``: the chance that k of n samples, c of them right, include a right one."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_levels(k):
    """The m of the reported pass@m: powers of two below ``k``, and ``k``."""
    levels, m = [], 1
    while m < k:
        levels.append(m)
        m *= 2
    return levels + [k]


def summarize(records, samples):
    """The metrics of one benchmark from its graded sample records (see the module docstring).

    Every record has ``problem_id``, ``sample`` (0 .. samples - 1), ``correct``, ``predicted``,
    ``tokens`` and ``truncated``; every problem must have each sample exactly once.
    """
    by_problem = defaultdict(dict)
    for record in records:
        if record["sample"] in by_problem[record["problem_id"]]:
            raise ValueError(f"problem {record['problem_id']!r} has sample {record['sample']} twice")
        by_problem[record["problem_id"]][record["sample"]] = record
    for problem_id, answers in by_problem.items():
        if sorted(answers) != list(range(samples)):
            raise ValueError(f"problem {problem_id!r} has samples {sorted(answers)}, expected 0..{samples - 1}")
    if not by_problem:
        raise ValueError("no graded samples")
    runs = [fmean(answers[j]["correct"] for answers in by_problem.values()) for j in range(samples)]
    right = [sum(r["correct"] for r in answers.values()) for answers in by_problem.values()]
    return {
        "problems": len(by_problem), "samples": samples,
        "avg": fmean(runs), "std": pstdev(runs), "runs": runs,
        "pass_at": {str(m): fmean(pass_at_k(samples, c, m) for c in right) for m in pass_levels(samples)},
        "mean_tokens": fmean(r["tokens"] for r in records),
        "truncation_rate": fmean(r["truncated"] for r in records),
        "no_answer_rate": fmean(r["predicted"] is None for r in records),
    }
