"""Command line: ``python -m spot_fast.rectify <stage> --workdir DIR [options]`` (or ``spot-fast-rectify``).

Stages, run in this order on one work directory (see ``layout``): elicit, correct, verify, build.
Exit status: 0 done, 1 some wrong answers are not final yet (an Oracle call failed or replied without
a marked correction: run ``correct`` again to retry them; ``verify`` and ``build`` then write nothing),
or ``build`` kept no pair, 2 bad input or options, 3 the Oracle stopped
responding (the circuit breaker; finished work is saved, the same command resumes), 130 interrupted
(finished work is saved; the same command resumes).
"""
import json
import logging
import os
import sys

from spot_fast.cli import ArgumentParser, number
from spot_fast.paths import check_output_dir
from spot_fast.rectify.chat_client import OracleUnreachable
from spot_fast.rectify.correct import UNFINISHED, NotReady
from spot_fast.rectify.oracle import PROVIDER_OPTIONS, make_oracle
from spot_fast.sampling.settings import add_sampling_arguments, positive_int, recorded_settings

PROG = "spot-fast-rectify"


def model_name(name, option):
    """``name``, or the built-in tiny model for None, after the hub check of ``option`` (shared with the
    trainer and spot-fast-eval: one line, in seconds, where the hub does not answer; imported here: it
    brings torch)."""
    from spot_fast.models import BUILTIN_MODEL
    from spot_fast.preflight import check_hub_reachable

    name = BUILTIN_MODEL if name is None else name
    check_hub_reachable(option, name)
    return name


def run_elicit(args):
    from spot_fast.rectify.elicit import elicit
    from spot_fast.sampling.generation import generator_loader

    model = model_name(args.model, "--model")
    return elicit(args.problems, args.workdir, generator_loader(args, model), {"model": model, **recorded_settings(args)},
                  samples=args.samples, batch_size=args.batch_size, limit=args.limit)


def oracle_from_options(args):
    """The Oracle the options choose (``oracle.make_oracle``), and the HTTP client behind it (None for a
    function)."""
    if args.oracle_callable:
        return make_oracle(args.oracle_callable)
    if not args.base_url or not args.oracle_model:
        raise ValueError("choose an Oracle: --oracle-callable module:function, or --base-url and "
                         "--oracle-model (or SPOT_ORACLE_BASE_URL and SPOT_ORACLE_MODEL)")
    try:
        body = json.loads(args.extra_body)
    except json.JSONDecodeError as e:
        raise ValueError(f"--extra-body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ValueError("--extra-body must be a JSON object")
    return make_oracle(base_url=args.base_url, model=args.oracle_model, extra_body=body,
                       provider_options={name: getattr(args, name) for name in PROVIDER_OPTIONS},
                       api_key=args.api_key, timeout=args.timeout, max_retries=args.max_retries,
                       backoff=args.backoff, max_connection_failures=args.max_connection_failures)


def run_correct(args):
    from spot_fast.rectify.correct import correct

    oracle, client = oracle_from_options(args)
    summary = correct(args.workdir, oracle, concurrency=args.concurrency,
                      max_unmarked_replies=args.max_unmarked_replies)
    if client is not None:
        summary.update({f"http {key}": n for key, n in sorted(client.stats.items())})
    return summary


def run_verify(args):
    from spot_fast.rectify.verify import verify

    return verify(args.workdir, model_name(args.tokenizer, "--tokenizer"), gamma=args.gamma)


def run_build(args):
    from spot_fast.rectify.build import build

    return build(args.workdir, model_name(args.tokenizer, "--tokenizer"), examples=args.examples)


EXAMPLES = """examples (the CPU demo: built-in tiny model, a demonstration Oracle):
  .venv/bin/spot-fast-rectify elicit  --workdir runs/rect --problems spot_fast/assets/problems.jsonl --samples 2 --max-new-tokens 64
  .venv/bin/spot-fast-rectify correct --workdir runs/rect --oracle-callable spot_fast.rectify.oracle:replace_final_answer
  .venv/bin/spot-fast-rectify verify  --workdir runs/rect
  .venv/bin/spot-fast-rectify build   --workdir runs/rect
each stage has its own options: .venv/bin/spot-fast-rectify STAGE --help"""


def parser():
    p = ArgumentParser(prog=PROG, description="SPoT data rectification: elicit errors, "
                                "correct them with an Oracle, verify and filter, build training pairs.", epilog=EXAMPLES)
    stages = p.add_subparsers(dest="stage", required=True)

    def stage(name, run, help_text):
        sp = stages.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES)
        sp.add_argument("--workdir", required=True, help="folder of the stage files")
        sp.set_defaults(run=run)
        return sp

    e = stage("elicit", run_elicit, "sample the model's answers to problems; keep the wrong ones")
    e.add_argument("--problems", required=True, help="JSONL: question|prompt, answer|ground_truth, id")
    e.add_argument("--model", help="local path or hub id (default: the built-in tiny model)")
    e.add_argument("--samples", type=positive_int, default=1, help="answers per problem")
    e.add_argument("--limit", type=positive_int, help="use only the first N problems (default: all)")
    add_sampling_arguments(e, max_new_tokens=2048)

    c = stage("correct", run_correct, "have an Oracle rewrite each wrong answer with minimal edits")
    c.add_argument("--oracle-callable", metavar="MODULE:FUNCTION",
                   help="a Python Oracle f(question, wrong_answer, ground_truth) -> str | None (default: none; "
                        "else --base-url and --oracle-model)")
    c.add_argument("--base-url", default=os.environ.get("SPOT_ORACLE_BASE_URL"),
                   help="OpenAI-compatible endpoint, e.g. https://host/v1 (default: $SPOT_ORACLE_BASE_URL)")
    c.add_argument("--oracle-model", default=os.environ.get("SPOT_ORACLE_MODEL"),
                   help="model name sent to the endpoint (default: $SPOT_ORACLE_MODEL)")
    c.add_argument("--api-key", default=os.environ.get("SPOT_ORACLE_API_KEY"),
                   help="bearer token (default: $SPOT_ORACLE_API_KEY, which keeps it out of the command line)")
    c.add_argument("--concurrency", type=positive_int, default=8, help="Oracle calls in flight at most")
    c.add_argument("--timeout", type=number(float, lambda v: v > 0, "> 0"), default=600.0,
                   help="seconds per attempt (socket timeout)")
    c.add_argument("--max-retries", type=number(int, lambda v: v >= 0, ">= 0"), default=6,
                   help="retries of a failed Oracle call (HTTP 429 and 5xx, timeouts), with exponential backoff")
    c.add_argument("--backoff", type=number(float, lambda v: v >= 0, ">= 0"), default=1.0,
                   help="base seconds of the exponential backoff")
    c.add_argument("--max-connection-failures", type=positive_int, default=32,
                   help="stop the stage after this many attempts in a row got no response (connection "
                        "errors, timeouts) from the endpoint; a rerun resumes")
    c.add_argument("--max-unmarked-replies", type=positive_int, default=3,
                   help="replies without a marked correction (one per run) before an answer is final "
                        "without a correction")
    for name, option in PROVIDER_OPTIONS.items():
        c.add_argument("--" + name.replace("_", "-"), type=option.type, help=option.help)
    c.add_argument("--extra-body", default="{}",
                   help="JSON object merged into every request body (temperature, max_tokens, ...)")

    v = stage("verify", run_verify, "check corrected answers and filter by change ratio")
    v.add_argument("--tokenizer", help="the trainer's tokenizer (default: the built-in tiny model's)")
    v.add_argument("--gamma", type=number(float, lambda v: 0 <= v <= 1, "in [0, 1]"), default=0.6,
                   help="largest change ratio kept")

    b = stage("build", run_build, "write the training pairs and the report")
    b.add_argument("--tokenizer", help="for the example diffs (default: the built-in tiny model's)")
    b.add_argument("--examples", type=number(int, lambda v: v >= 0, ">= 0"), default=3,
                   help="marked examples in the report")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        check_output_dir("--workdir", args.workdir)
        summary = args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished work is saved, run the same command to resume",
              file=sys.stderr)
        return 130
    except NotReady as e:
        print(f"{PROG}: {args.stage}: not done: {e}", file=sys.stderr)
        return 1
    except OracleUnreachable as e:
        print(f"{PROG}: stopped: {e}. Finished work is saved; run the same command to resume once the "
              "endpoint answers (--max-connection-failures sets when the stage stops)", file=sys.stderr)
        return 3
    except (ValueError, RuntimeError, OSError) as e:  # bad input or options (InputError is a ValueError)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.stage} summary:")
    for what, value in summary.items():
        print(f"  {what}: {value}")
    return 1 if summary.get(UNFINISHED) else 0


if __name__ == "__main__":
    sys.exit(main())
