"""Train a causal LM with SPoT (or its baselines, or PEAR) on DeepSpeed.

    torchrun --nproc_per_node=K spot_fast/train.py [options]      # or: python spot_fast/train.py

With no options it runs the built-in demo: a tiny Qwen3-architecture model on the bundled pairs, on
the CPU if there is no GPU. Read it top to bottom:
- ``set_up``: read and tokenize the data (bad input stops here, before anything is loaded or
  written); load the model with the fused log-prob head (logits are never formed; under ZeRO-3
  constructed partitioned over the ranks); DeepSpeed engine (ZeRO-2 by default), AdamW,
  transformers' cosine schedule; score once with the starting weights, through the engine's module
  (where ZeRO-3 gathers parameters), and cache what the objective needs (reference sums, PEAR
  behaviour per token, retain and evaluation references); resume if asked. Returns a ``Run``, or None
  where ``--resume`` finds a finished run with nothing left to train (before any of the above).
- ``train``: the loop, one ``optimizer_step`` per step: per micro-batch log-probs -> rewards ->
  (delta) -> loss, or PEAR weights -> loss; backward; the engine steps at the accumulation boundary.
  Metrics every ``log_every`` steps, retain-set forgetting signals every ``retain_every``, held-out
  evaluation (``held_out.py``) every ``eval_every`` and after the last step, atomic checkpoints every
  ``save_every`` (each with the last evaluation in its training state). ``--sync-debug warn`` (CUDA) counts every host synchronisation in
  the loop by call site into OUTPUT_DIR/host_syncs.json (``host_syncs.py``).
- ``finish``: the final model (OUTPUT_DIR/final: a Hugging Face model directory, without the optimizer
  state unless ``--save-optimizer-in-final``), plot.
- ``main``: a bad option, data file, model or cache ends the run with one line, printed once under
  torchrun where the ranks fail alike (``report_error``); Ctrl-C or SIGTERM ends it with one line from
  rank 0 saying the step reached, the last checkpoint and the command that resumes from it, with exit
  status 130 or 143. In the training loop the first signal takes effect at the end of the step (and
  of the checkpoint save) under way, so nothing is left half-done; a second Ctrl-C stops at once.
"""
import os
import shlex
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from spot_fast import run_dir, summary
from spot_fast import activation_checkpointing
from spot_fast.attention import ATTENTION_BACKENDS, choose_attention
from spot_fast.checkpoint import (FINAL, TrainingState, checkpoints, has_engine_state, load_checkpoint, prune_checkpoints,
                                  save_checkpoint, saved_step)
from spot_fast.config import ConfigError, TrainConfig, parse_config, write_config
from spot_fast.batching import collate, pair_tokens, to_device
from spot_fast.data import DataError, load_pairs
from spot_fast.engine import build_engine, deepspeed_config, grad_accum_note, start_distributed, stop_distributed
from spot_fast.example_order import ExampleOrder
from spot_fast.forgetting.retain import RetainSet
from spot_fast.held_out import HeldOutSet
from spot_fast.host_syncs import HostSyncs
from spot_fast.logprob_cache import CacheError, ScoredOnce
from spot_fast.logprob_head import LogprobModel, install_logprob_head
from spot_fast.lora import adapters_disabled, add_lora, parameter_count, save_merged
from spot_fast.metrics import MetricsLog, MetricsWindow, plot_metrics
from spot_fast.models import ModelError, check_model_name, hidden_size, load_model, load_tokenizer, model_identity
from spot_fast.noise import silence_known_noise
from spot_fast.objective import Objective, micro_batch_loss
from spot_fast.preflight import cuda_available, liger_choice
from spot_fast.scoring import Scorer
from spot_kernels import RewardShift, resolve_backend

OTHER_RANKS_WAIT_S = 10  # how long a rank other than 0 waits for rank 0 to report the same error
PROGRESS_METRICS = (("loss", "loss"), ("margin", "rewards/margin"), ("w", "pear/weight_mean"),
                    ("retain_kl", "retain/kl_k3"), ("tok_s", "tokens_per_s"))


def on_when_auto(value, device):
    return value == "on" or (value == "auto" and device.type == "cuda")


@dataclass
class Run:
    """Everything the loop needs, built once by ``set_up``."""
    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    tokenizer: object
    pairs: list
    order: ExampleOrder
    objective: Objective
    reference: object        # [P, 2] or [P, 1] reference sums on the host (rows gathered per micro-batch), or None
    engine: object
    state: TrainingState
    scorer: Scorer
    log: MetricsLog
    output_dir: Path
    retain: object = None    # RetainSet
    pair_tokens: object = None  # example index -> tokens it forwards (token-budget micro-batches)
    held_out: object = None  # HeldOutSet: --eval-data

    @property
    def is_main(self):
        return self.rank == 0


def read_data(config, tokenizer):
    """Training, evaluation and retain pairs (the last two None when not asked for); prints what was read."""
    layout = config.token_layout()
    pairs, stats = load_pairs(config.data, tokenizer, config.max_length, config.needs_rejected,
                              with_behavior=config.needs_behavior, layout=layout, split=config.data_split,
                              config=config.data_config)
    eval_pairs = load_pairs(config.eval_data, tokenizer, config.max_length, config.needs_rejected, layout=layout,
                            split=config.eval_data_split, config=config.data_config)[0] if config.eval_data else None
    retain_pairs = load_pairs(config.retain_data, tokenizer, config.max_length, with_rejected=False, layout=layout)[0] if config.retain_data else None
    if config.needs_behavior and pairs[0].behavior_logps is not None and config.behavior_model:
        raise DataError(f"{config.data} has behavior_logps and --behavior-model is {config.behavior_model}: give one of the two")
    return pairs, stats, eval_pairs, retain_pairs


def check_behavior_model(config, tokenizer):
    """Fails early unless the behaviour model can score this tokenizer's ids (same vocabulary)."""
    check_model_name(config.behavior_model)
    try:
        vocabulary = load_tokenizer(config.behavior_model, need_chat_template=False).get_vocab()
    except ModelError:
        print(f"warning: {config.behavior_model} has no tokenizer; its vocabulary is assumed to be the policy's")
        return
    if vocabulary != tokenizer.get_vocab():
        raise DataError(f"behaviour model {config.behavior_model}: its tokenizer's vocabulary differs from "
                        f"{config.model}'s; PEAR needs both models to score the same token ids")


def load_policy(name, config, dtype, device, attention, zero3_config=None):
    """A ``LogprobModel``: the model with the fused log-prob head and the ``attention`` backend (and,
    for the policy, LoRA adapters when ``--lora-r`` on a 4-bit body when ``--load-in-4bit``), on
    ``device``, or partitioned over the ranks when given ``zero3_config`` (ZeRO-3's ``zero.Init``
    places each shard on the device)."""
    is_policy = name == config.model
    model = load_model(name, dtype=dtype, attn_implementation=ATTENTION_BACKENDS[attention].implementation,
                       zero3_config=zero3_config, load_in_4bit=config.load_in_4bit and is_policy)
    if liger_choice(config.liger, config.model, cuda_available())[0]:  # checked with the options (preflight)
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    model = install_logprob_head(model, config.kernel_backend)
    if config.lora_r and is_policy:
        add_lora(model, config.lora_r, config.lora_alpha, config.lora_targets, config.seed)
    return LogprobModel(model if zero3_config is not None else model.to(device))


def set_up(config):
    """The ``Run``, or None where the run to resume has finished and has nothing left to train (said on
    rank 0; nothing is loaded or written)."""
    world, is_main = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("RANK", "0") == "0"
    resume_from = run_dir.prepare(config, world)
    summary.mark_start()
    tokenizer = load_tokenizer(config.model)
    pairs, stats, eval_pairs, retain_pairs = read_data(config, tokenizer)
    if config.needs_behavior and config.behavior_model:
        check_behavior_model(config, tokenizer)
    order = ExampleOrder(len(pairs), config.per_device_batch, config.grad_accum, world, config.epochs, config.seed,
                         config.max_steps)
    if order.steps_per_epoch == 0:
        raise DataError(f"{config.data}: {len(pairs)} pairs do not fill one optimizer step of "
                        f"{order.global_batch} pairs (per_device_batch x grad_accum x world)")
    if resume_from is not None and run_dir.finished(resume_from, order.total_steps):
        if is_main:
            more = " (it holds the optimizer state: a larger --max-steps trains on)" if has_engine_state(resume_from) else ""
            print(f"{config.output_dir}: the run finished at step {saved_step(resume_from)} of {order.total_steps}; "
                  f"nothing left to train, {resume_from} is left as it is{more}")
        return None
    rank, world, device = start_distributed()
    if rank == 0:
        if resume_from is None and config.overwrite:
            run_dir.delete_previous_results(config.output_dir)
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        write_config(config, config.output_dir)  # --config OUTPUT_DIR/config.yaml runs the same again
    torch.manual_seed(config.seed)
    bf16 = on_when_auto(config.bf16, device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    attention, why = choose_attention(config.attention, device)
    if rank == 0:  # one block: what the run is about to do (spot_fast/summary.py)
        print("\n".join(summary.start_block(config, world=world, device=device, dtype=dtype, pairs=pairs, stats=stats,
                                            order=order, attention=(attention, why),
                                            kernel_backend=resolve_backend(config.kernel_backend, device, dtype),
                                            notes=[grad_accum_note(config, bf16)])), flush=True)
    engine_config = deepspeed_config(config, bf16, device, hidden_size(config.model))
    policy = load_policy(config.model, config, dtype, device, attention, engine_config if config.zero_stage == 3 else None)
    activation_checkpointing.enable(policy.model, activation_checkpointing.resolve(config.gradient_checkpointing,
                                                                                   device.type == "cuda"))
    policy.train()
    engine = build_engine(policy, config, engine_config, config.learning_rate, order.total_steps)
    if rank == 0 and config.lora_r:
        trainable = parameter_count(p for p in policy.parameters() if p.requires_grad)
        print(f"LoRA: {trainable} trainable parameters of {parameter_count(policy.parameters())}")

    scorer = Scorer(2 * config.per_device_batch, config.pack == "on", tokenizer.pad_token_id, device,
                    config.share_prefix == "on")
    scored = ScoredOnce(scorer, config.cache_dir or str(Path(config.output_dir).parent / ".logprob_cache"), dtype,
                        resolve_backend(config.kernel_backend, device, dtype))
    starting_policy = lambda: engine.module  # noqa: E731  (no step taken yet: the starting weights)
    start = model_identity(config.model, config.load_in_4bit)  # the starting policy (a 4-bit base is another model)
    reference = eval_reference = retain = held_out = None
    with adapters_disabled(policy.model):  # LoRA: every reference is the base model's, adapters off
        if config.needs_reference:
            reference = scored.get("reference", config.data, start, pairs, False, starting_policy)  # on the host
            if eval_pairs is not None:
                eval_reference = scored.get("reference", config.eval_data, start, eval_pairs, False, starting_policy)
        if config.needs_behavior and pairs[0].behavior_logps is None:
            model, load = ((model_identity(config.behavior_model),
                            lambda: load_behavior_model(config, tokenizer, dtype, device, attention, engine_config))
                           if config.behavior_model else (start, starting_policy))
            behavior = scored.get("behaviour", config.data, model, pairs, True, load)
            for pair, values in zip(pairs, behavior.split([len(p.chosen_ids) for p in pairs])):
                pair.behavior_logps = values  # a view: the pairs share one fp32 tensor
        if retain_pairs is not None:
            retain_reference = scored.get("retain-reference", config.retain_data, start, retain_pairs, True,
                                          starting_policy)
            retain = RetainSet(retain_pairs, retain_reference, scorer)
        if eval_pairs is not None:
            eval_tokens = scored.get("reference-tokens", config.eval_data, start, eval_pairs, True, starting_policy)
            held_out = HeldOutSet(eval_pairs, eval_tokens, eval_reference, scorer)

    reward_shift = RewardShift(config.delta_mode, config.delta_decay, all_reduce=dist.all_reduce if world > 1 else None)
    objective = Objective(config.loss, config.beta, reward_shift, config.pear() if config.needs_behavior else None)
    state = TrainingState(order, reward_shift)
    if resume_from is not None:
        load_checkpoint(engine, resume_from, state)
        if rank == 0:
            print(f"resumed from {resume_from} at step {state.step}")
    log = MetricsLog(config.output_dir, enabled=rank == 0, resumed_step=state.step if resume_from else None,
                     report_to=config.report_to, run_config={**vars(config), "attention_chosen": attention})
    forwarded = [pair_tokens(p, config.share_prefix == "on") for p in pairs]
    return Run(config=config, rank=rank, world=world, device=device, tokenizer=tokenizer, pairs=pairs, order=order,
               objective=objective, reference=reference, engine=engine, state=state, scorer=scorer, log=log,
               output_dir=Path(config.output_dir), retain=retain, pair_tokens=forwarded.__getitem__,
               held_out=held_out)


def load_behavior_model(config, tokenizer, dtype, device, attention, engine_config):
    """PEAR's behaviour model, for scoring once (freed after). Under ZeRO-3 it is partitioned like the
    policy and wrapped in an engine without optimizer, whose hooks gather its parameters."""
    zero3 = config.zero_stage == 3
    model = load_policy(config.behavior_model, config, dtype, device, attention, engine_config if zero3 else None)
    head = model.model.get_output_embeddings().weight
    vocab_size = getattr(head, "ds_shape", head.shape)[0]
    if vocab_size < len(tokenizer):
        raise DataError(f"{config.behavior_model}: its LM head scores {vocab_size} tokens but the policy's tokenizer "
                        f"has {len(tokenizer)}; both models must score the same token ids")
    if zero3:
        import deepspeed
        model = deepspeed.initialize(model=model, config=engine_config)[0].module
    return model


def micro_batch_weights(micro_batches):
    """Each micro-batch's share of the step's pairs (``micro_batches``: lists of example indices).
    A micro-batch's loss is the mean over its pairs, so the sum of the losses times these weights is
    the mean over all the step's pairs, however they are grouped (groups of unequal size included)."""
    pairs_in_step = sum(len(indices) for indices in micro_batches)
    return [len(indices) / pairs_in_step for indices in micro_batches]


def optimizer_step(run, step, window):
    """One optimizer step over this rank's share of the step's pairs, in micro-batches (fixed groups
    of ``per_device_batch`` pairs, or whole pairs up to ``max_tokens_per_batch`` tokens). Each
    micro-batch's loss is its pairs' summed losses over the pairs of the whole step on this rank, so
    the step's loss is the mean over its pairs however they are grouped; gradients accumulate until
    the last micro-batch, then the engine averages them over ranks and steps. Adds each micro-batch's
    metrics to ``window`` (device tensors, read once per logged row); returns the learning rate the
    step used. Nothing here waits for the device (tests/test_host_sync.py): batches and reference rows
    are gathered on the host and copied from pinned memory without blocking."""
    config, engine = run.config, run.engine
    learning_rate = engine.get_lr()[0]  # the scheduler moves on inside engine.step()
    micro_batches = run.order.micro_batches(step, run.rank, run.pair_tokens, config.max_tokens_per_batch)
    for number, (indices, weight) in enumerate(zip(micro_batches, micro_batch_weights(micro_batches))):
        batch = collate([run.pairs[i] for i in indices], config.pack == "on", run.tokenizer.pad_token_id,
                        config.share_prefix == "on").to(run.device)
        reference = to_device(run.reference[indices], run.device) if run.reference is not None else None
        loss, metrics, counts = micro_batch_loss(engine(batch), batch, reference, run.objective)
        engine.set_gradient_accumulation_boundary(number == len(micro_batches) - 1)
        engine.backward(loss * weight, scale_wrt_gas=False)
        window.add(metrics, counts, batch.num_tokens, batch.unshared_tokens)
    engine.step()
    return learning_rate


def measure_retain(run, window):
    began = time.perf_counter()
    row = run.retain.measure(run.engine.module)
    window.exclude(time.perf_counter() - began)  # measuring is not training throughput
    return row


def measure_held_out(run, window):
    """``evaluate`` now, recorded in the training state (checkpoints written after it carry it, so an
    early checkpoint can be chosen by its held-out metrics), and not counted as training time."""
    began = time.perf_counter()
    results = evaluate(run)
    run.state.evaluation = {"step": run.state.step, **results}
    window.exclude(time.perf_counter() - began)
    return results


def evaluation_due(run, done):
    """Whether the held-out pairs are evaluated after step ``done``: every ``eval_every`` steps and after the last."""
    return run.held_out is not None and (done == run.order.total_steps or
                                         (run.config.eval_every and done % run.config.eval_every == 0))


def train(run):
    config, order = run.config, run.order
    if run.state.step == 0:  # the starting points: KL 0 up to float noise, rewards 0
        start = run.retain.measure(run.engine.module) if run.retain is not None else {}
        if config.eval_every:
            start.update(evaluate(run))
        if start:
            run.log.log(0, start)
    window, first_step = MetricsWindow(), run.state.step
    host_syncs = HostSyncs(run.device) if config.sync_debug == "warn" else None
    with signals_wait_for_the_step(), \
            tqdm(range(run.state.step, order.total_steps), desc="train", unit="step", disable=not run.is_main,
                 initial=run.state.step, total=order.total_steps) as progress, \
            (host_syncs.traced() if host_syncs else nullcontext()):
        for step in progress:
            stop_if_signalled()  # a signal that came during the previous step ends the run here
            learning_rate = optimizer_step(run, step, window)
            run.state.step = done = step + 1
            row = {}
            if done % config.log_every == 0 or done == order.total_steps:
                grad_norm = run.engine.get_global_grad_norm()  # a device tensor: read with the metrics, in one copy
                row = window.row(run.world, {"grad_norm": 0.0 if grad_norm is None else grad_norm})
                row.update({"lr": learning_rate, "epoch": step / order.steps_per_epoch})
            if run.retain is not None and (done % config.retain_every == 0 or done == order.total_steps):
                row.update(measure_retain(run, window))
            if evaluation_due(run, done):
                row.update(measure_held_out(run, window))
            if row:
                run.log.log(done, row)
                progress.set_postfix({name: f"{row[key]:.4g}" for name, key in PROGRESS_METRICS if key in row})
            if config.save_every and done % config.save_every == 0 and done < order.total_steps:
                save_checkpoint(run.engine, run.tokenizer, run.output_dir, f"checkpoint-{done}", run.state, config, run.rank)
                if run.is_main:
                    prune_checkpoints(run.output_dir, config.keep_last)
    if host_syncs is not None and run.is_main:
        host_syncs.write(run.output_dir / "host_syncs.json", order.total_steps - first_step)
    finish(run, first_step)


def evaluate(run):
    """The held-out metrics now (``held_out.HeldOutSet``: loss, rewards, margin, accuracy, NLL, KL to the
    reference; no grad)."""
    return run.held_out.measure(run.engine.module, run.objective, desc="evaluation" if run.is_main else None)


def finish(run, first_step=0):
    """The final model (with the last evaluation, taken in the loop after the last step, in its
    training state), the merged copy, the plot."""
    if run.held_out is not None and run.is_main:
        print("evaluation: " + ", ".join(f"{k} {v:.4f}" for k, v in run.state.evaluation.items() if k != "step"))
    final = save_checkpoint(run.engine, run.tokenizer, run.output_dir, FINAL, run.state, run.config, run.rank,
                            engine_state=run.config.save_optimizer_in_final)
    if run.config.lora_save_merged:
        save_merged(run.engine.module.model, run.tokenizer, run.output_dir / "final-merged")
    run.log.close()
    if run.is_main:
        plot_metrics(run.log.path, run.output_dir / "training.png")
        merged = run.output_dir / "final-merged"
        print("\n".join(summary.end_block(run.output_dir, run.log.path, final, first_step, run.state.step,
                                          [("merged model", merged), ("host syncs", run.output_dir / "host_syncs.json")])))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both end a run the same way."""


_deferred = {"active": False, "signal": None}  # inside the training loop: the first signal, kept for the step's end


def _interrupt(signum):
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _stop(signum, frame):
    """The first SIGINT or SIGTERM raises, or, inside the training loop, is kept until the step under
    way ends (``stop_if_signalled``): raised in the middle of a step it could stop anything half-done
    (a library's object half-built, a collective half-joined). A later SIGTERM is ignored while the
    run ends (torchrun sends one to every rank after a Ctrl-C that every rank already got); a later
    Ctrl-C raises at once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _deferred["active"]:
        _deferred["signal"] = signum
        return
    _interrupt(signum)


def stop_if_signalled():
    """Raises for the signal kept since the last step (``_stop``), if one came."""
    if _deferred["signal"] is not None:
        _interrupt(_deferred["signal"])


@contextmanager
def signals_wait_for_the_step():
    """Inside the block a first signal waits for ``stop_if_signalled`` (the next step's start, or the
    block's end); after it, signals raise where they arrive."""
    _deferred.update(active=True, signal=None)
    try:
        yield
        stop_if_signalled()
    finally:
        _deferred.update(active=False, signal=None)


@contextmanager
def signals_stop_the_run():
    """SIGINT and SIGTERM raise (``_stop``) inside the block; the previous handlers are back after it."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, _stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def resume_command(argv, world, local_world):
    """The command that continues this run from its last checkpoint: its own options, without
    ``--resume`` and ``--overwrite``, then ``--resume latest``."""
    options, args = [], iter(argv)
    for arg in args:
        if arg == "--resume":
            next(args, None)  # its value
        elif arg.split("=", 1)[0] not in ("--resume", "--overwrite", "--no-overwrite"):
            options.append(arg)
    script = os.path.relpath(__file__)
    script = __file__ if script.startswith("..") else script
    python = os.path.relpath(sys.executable)  # as the README writes it: .venv/bin/python
    python = sys.executable if python.startswith("..") else python
    launcher = [python] + ([] if world == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={local_world}"])
    nodes = "" if world == local_world else f"on each of the {world // local_world} nodes: "
    return nodes + shlex.join(launcher + [script] + options + ["--resume", "latest"])


def interrupted_message(config, step, argv):
    """One line: the step reached, the last checkpoint, and how to go on from it."""
    world, local_world = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    reached = "before the first step" if step is None else f"at step {step}"
    saved = checkpoints(config.output_dir)
    if not saved:
        return (f"interrupted {reached}; no checkpoint in {config.output_dir} to resume from (--save-every N writes "
                f"one every N steps)")
    return (f"interrupted {reached}; last checkpoint {saved[-1]}; continue with: "
            f"{resume_command(argv, world, local_world)}")


def report_error(error, rank):
    """Prints ``error`` once per run where the ranks fail alike, as they do on bad options or data (they
    read the same inputs). Rank 0 prints at once. Another rank waits ``OTHER_RANKS_WAIT_S`` first:
    torchrun stops every rank as soon as one exits with an error, so when rank 0 fails too this rank
    ends silently (SIGTERM, default action); an error of this rank alone is printed after the wait."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if rank != 0:
        time.sleep(OTHER_RANKS_WAIT_S)
    print(f"error: {error}", file=sys.stderr)


def main(argv=None):
    silence_known_noise()
    argv = sys.argv[1:] if argv is None else argv
    config = parse_config(argv)
    rank = int(os.environ.get("RANK", "0"))
    run, succeeded = None, False
    with signals_stop_the_run():
        try:
            run = set_up(config)
            if run is not None:
                train(run)
            succeeded = True
        except (ConfigError, DataError, ModelError, CacheError) as error:
            report_error(error, rank)
            return 1
        except KeyboardInterrupt as interrupt:
            if rank == 0:
                print(interrupted_message(config, run and run.state.step, argv), file=sys.stderr)
            return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
        finally:
            stop_distributed(succeeded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
