"""Train a causal LM with SPoT (or its baselines, or PEAR) on DeepSpeed.

    torchrun --nproc_per_node=K spot_fast/train.py [options]      # or: python spot_fast/train.py

With no options it runs the built-in demo: a tiny Qwen3-architecture model on the bundled pairs, on
the CPU if there is no GPU. The loop, top to bottom:
1. read and tokenize the pairs (bad input stops here, before anything is written); objectives that
   compare two answers read the rejected ones, the others (sft, reward_sft, pear) do not;
2. load the model and replace its LM head by the fused log-prob head (logits are never formed);
3. log-probs computed once with the starting weights (or PEAR's behaviour model) and cached:
   reference sequence sums, PEAR behaviour per token, retain-set reference per token;
4. DeepSpeed engine (ZeRO-2 by default), AdamW, cosine schedule; resume if asked;
5. per micro-batch: log-probs -> rewards -> (delta) -> loss, or PEAR weights -> loss; backward; the
   engine steps at the accumulation boundary; metrics every ``log_every`` steps, retain-set
   forgetting signals every ``retain_every``; atomic checkpoints;
6. final checkpoint, evaluation on ``eval_data``, plot.
"""
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from spot_fast.checkpoint import checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from spot_fast.config import parse_config
from spot_fast.data import DataError, collate, epoch_order, file_sha256, load_pairs
from spot_fast.engine import build_engine, start_distributed, stop_distributed
from spot_fast.forgetting.retain import RetainSet
from spot_fast.logprob_cache import LogprobCache, compute_sequence_logps, compute_token_logps, load_or_compute
from spot_fast.metrics import MetricsLog, plot_metrics
from spot_fast.models import check_model_name, load_model, load_tokenizer, model_identity
from spot_fast.policy import batch_logps, install_logprob_head
from spot_kernels import RewardShift, implicit_reward, pear_loss, preference_loss


def on_when_auto(value, device):
    return value == "on" or (value == "auto" and device.type == "cuda")


def logprob_cache(what, config, tokenizer, data_path, model_name, bf16):
    """The cache of ``what`` log-probs of ``data_path`` under ``model_name``, keyed by all that changes them."""
    return LogprobCache(config.cache_dir or str(Path(config.output_dir).parent / ".logprob_cache"), what, {
        "model": model_identity(model_name), "data": file_sha256(data_path), "max_length": config.max_length,
        "tokenizer": [tokenizer.name_or_path, len(tokenizer)], "chat_template": tokenizer.chat_template,
        "dtype": "bf16" if bf16 else "fp32",
    })


def reference_logps(model, tokenizer, config, data_path, pairs, bf16, device):
    """[num_pairs, 2] (chosen, rejected) reference log-probs of ``pairs`` ([num_pairs, 1] without rejected)."""
    def compute(share, desc):
        return {"logps": compute_sequence_logps(model, share, 2 * config.per_device_batch, config.pack == "on",
                                                tokenizer.pad_token_id, device, desc)}
    what = "reference" if config.needs_rejected else "reference-chosen"  # [P, 2] or [P, 1]
    cache = logprob_cache(what, config, tokenizer, data_path, config.model, bf16)
    return load_or_compute(cache, pairs, compute, f"{what} log-probs of {Path(data_path).name}")["logps"].to(device)


def token_logps_of(model_name, starting_policy, what, tokenizer, config, data_path, pairs, bf16, device):
    """Per-token log-probs of the chosen answers of ``pairs``, concatenated in pair order, under
    ``model_name`` (loaded only to compute them) or, when it is empty, the starting policy."""
    def compute(share, desc):
        model = starting_policy
        if model_name:
            dtype = torch.bfloat16 if bf16 else torch.float32
            model = install_logprob_head(load_model(model_name, dtype=dtype), config.kernel_backend).to(device)
            vocab_size = model.get_output_embeddings().weight.shape[0]
            if vocab_size < len(tokenizer):
                raise DataError(f"{model_name}: its LM head scores {vocab_size} tokens but the policy's tokenizer "
                                f"has {len(tokenizer)}; both models must score the same token ids")
        return {"token_logps": compute_token_logps(model, share, 2 * config.per_device_batch, config.pack == "on",
                                                   tokenizer.pad_token_id, device, desc)}
    cache = logprob_cache(what, config, tokenizer, data_path, model_name or config.model, bf16)
    return load_or_compute(cache, pairs, compute, f"{what} log-probs of {Path(data_path).name}")["token_logps"]


def check_behavior_model(config, tokenizer):
    """Fails early unless the behaviour model can score this tokenizer's ids (same vocabulary)."""
    check_model_name(config.behavior_model)
    try:
        vocabulary = load_tokenizer(config.behavior_model).get_vocab()
    except (OSError, ValueError):
        print(f"warning: {config.behavior_model} has no tokenizer; its vocabulary is assumed to be the policy's")
        return
    if vocabulary != tokenizer.get_vocab():
        raise DataError(f"behaviour model {config.behavior_model}: its tokenizer's vocabulary differs from "
                        f"{config.model}'s; PEAR needs both models to score the same token ids")


def reward_metrics(chosen, rejected, prefix=""):
    """Mean implicit rewards (and margin and accuracy when there is a rejected side), by metric name."""
    metrics = {f"{prefix}rewards/chosen": chosen.mean()}
    if rejected is not None:
        metrics.update({f"{prefix}rewards/rejected": rejected.mean(), f"{prefix}rewards/margin": (chosen - rejected).mean(),
                        f"{prefix}rewards/accuracy": (chosen > rejected).float().mean()})
    return metrics


def pear_metrics(policy_logps, behavior_logps, weights, pear):
    """Mean weight, the fractions of weights at each clip, and the mean (absolute) log-ratio before clipping."""
    at_min, at_max = pear.weight_min * (1 + 1e-6), pear.weight_max * (1 - 1e-6)
    log_ratio = policy_logps.detach() - behavior_logps
    return {"pear/weight_mean": weights.mean(), "pear/weight_at_min": (weights <= at_min).float().mean(),
            "pear/weight_at_max": (weights >= at_max).float().mean(),
            "pear/log_ratio": log_ratio.mean(), "pear/abs_log_ratio": log_ratio.abs().mean()}


def step_loss(model, batch, ref, config, reward_shift):
    """Loss of one micro-batch and its detached metrics (name -> 0-d tensor).

    ``ref`` is [B, 2] (or [B, 1]) reference log-probs for the objectives that need them, else None;
    ``pear`` reads the behaviour log-probs from the batch.
    """
    logps = batch_logps(model, batch)
    chosen_tokens = batch.seq_index < batch.num_pairs
    metrics = {
        "chosen/nll": -logps.token_logps[chosen_tokens].detach().mean(),
        "chosen/entropy": logps.entropy[chosen_tokens].mean(),
        "chosen/token_accuracy": logps.target_is_argmax[chosen_tokens].float().mean(),
        "padding_fraction": torch.tensor(batch.padding_fraction, device=logps.chosen.device),
    }
    if config.loss == "pear":
        pear = config.pear()
        per_example, weights = pear_loss(logps.token_logps, batch.behavior_logps, batch.seq_index,
                                         batch.num_sequences, pear)
        metrics.update(pear_metrics(logps.token_logps, batch.behavior_logps, weights, pear))
    elif config.loss == "sft":
        per_example = preference_loss("sft", logps.chosen, chosen_lengths=batch.chosen_lengths)
    else:
        ref_rejected = ref[:, 1] if config.needs_rejected else None
        chosen_rewards = implicit_reward(logps.chosen, ref[:, 0], config.beta).detach()
        rejected_rewards = implicit_reward(logps.rejected, ref_rejected, config.beta).detach() if config.needs_rejected else None
        metrics.update(reward_metrics(chosen_rewards, rejected_rewards))
        delta = 0.0
        if config.loss == "spot_bco":
            delta = metrics["delta"] = reward_shift.update(chosen_rewards, rejected_rewards).float()
        per_example = preference_loss(config.loss, logps.chosen, logps.rejected, ref[:, 0], ref_rejected,
                                      beta=config.beta, delta=delta)
    loss = per_example.mean()
    metrics["loss"] = loss.detach()
    return loss, metrics, batch.num_tokens


PROGRESS_METRICS = (("loss", "loss"), ("margin", "rewards/margin"), ("w", "pear/weight_mean"),
                    ("retain_kl", "retain/kl_k3"), ("tok_s", "tokens_per_s"))


def mean_over_ranks(metrics):
    """``metrics`` (name -> 0-d tensor, the same names on every rank) averaged over ranks, as floats."""
    names = sorted(metrics)
    values = torch.stack([metrics[name].float() for name in names])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return dict(zip(names, values.tolist()))


class Schedule:
    """Which examples each rank sees at each micro-step: the same global order for any world size.

    A global micro-batch is ``per_device_batch * world`` consecutive examples of the epoch's shuffled
    order; rank r takes its r-th slice. An optimizer step is ``grad_accum`` global micro-batches.
    The tail of an epoch that does not fill a whole optimizer step is left out (reported).
    """

    def __init__(self, num_examples, config, world):
        self.config = config
        self.orders = {}  # epoch -> shuffled order, computed once per epoch
        self.micro = config.per_device_batch * world
        self.steps_per_epoch = num_examples // (self.micro * config.grad_accum)
        self.num_examples = num_examples
        total = self.steps_per_epoch * config.epochs
        self.total_steps = min(total, config.max_steps) if config.max_steps > 0 else total

    def examples(self, step, micro_step, rank):
        """Indices of the examples ``rank`` trains on at ``micro_step`` of optimizer step ``step``."""
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        start = (step_in_epoch * self.config.grad_accum + micro_step) * self.micro + rank * self.config.per_device_batch
        if epoch not in self.orders:
            self.orders = {epoch: epoch_order(self.num_examples, epoch, self.config.seed)}
        return self.orders[epoch][start:start + self.config.per_device_batch]


def evaluate(model, pairs, ref, config, pad_id, device):
    """Held-out NLL per chosen token and, where the objective has a reference, implicit rewards (no grad)."""
    logps = compute_sequence_logps(model, pairs, 2 * config.per_device_batch, config.pack == "on", pad_id, device,
                                   desc="evaluation").to(device)
    results = {"eval/nll": -logps[:, 0].sum() / sum(len(p.chosen_ids) for p in pairs)}
    if ref is not None:
        chosen = implicit_reward(logps[:, 0], ref[:, 0], config.beta)
        rejected = implicit_reward(logps[:, 1], ref[:, 1], config.beta) if config.needs_rejected else None
        results.update(reward_metrics(chosen, rejected, prefix="eval/"))
    return {name: float(value) for name, value in results.items()}


def train(config):
    tokenizer = load_tokenizer(config.model)
    pairs, data_stats = load_pairs(config.data, tokenizer, config.max_length, config.needs_rejected,
                                   with_behavior=config.loss == "pear")
    eval_pairs = load_pairs(config.eval_data, tokenizer, config.max_length, config.needs_rejected)[0] if config.eval_data else None
    retain_pairs = load_pairs(config.retain_data, tokenizer, config.max_length, with_rejected=False)[0] if config.retain_data else None
    behavior_in_data = pairs[0].behavior_logps is not None
    if config.loss == "pear" and behavior_in_data and config.behavior_model:
        raise DataError(f"{config.data} has behavior_logps and --behavior-model is {config.behavior_model}: give one of the two")
    if config.loss == "pear" and config.behavior_model:
        check_behavior_model(config, tokenizer)
    rank, world, device = start_distributed()
    is_main = rank == 0
    torch.manual_seed(config.seed)
    bf16 = on_when_auto(config.bf16, device)
    schedule = Schedule(len(pairs), config, world)
    if schedule.steps_per_epoch == 0:
        raise DataError(f"{config.data}: {len(pairs)} pairs do not fill one optimizer step of "
                        f"{schedule.micro * config.grad_accum} pairs (per_device_batch x grad_accum x world)")
    if is_main:
        left_out = len(pairs) - schedule.steps_per_epoch * schedule.micro * config.grad_accum
        print(f"data: {data_stats.pairs} {'pairs' if config.needs_rejected else 'examples'}, {data_stats.skipped_long_prompt} "
              f"skipped (prompt longer than max_length), {data_stats.truncated_completions} completions truncated, "
              f"{left_out} left out per epoch; {schedule.total_steps} optimizer steps on {world} process(es), {device.type}")

    model = load_model(config.model, dtype=torch.bfloat16 if bf16 else torch.float32)
    if on_when_auto(config.liger, device):
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    model = install_logprob_head(model, config.kernel_backend).to(device)
    ref = eval_ref = retain = None
    if config.needs_reference:
        ref = reference_logps(model, tokenizer, config, config.data, pairs, bf16, device)
        if eval_pairs is not None:
            eval_ref = reference_logps(model, tokenizer, config, config.eval_data, eval_pairs, bf16, device)
    if config.loss == "pear" and not behavior_in_data:
        behavior = token_logps_of(config.behavior_model, model, "behaviour", tokenizer, config, config.data, pairs,
                                  bf16, device)
        for pair, values in zip(pairs, behavior.split([len(p.chosen_ids) for p in pairs])):
            pair.behavior_logps = values  # a view: the pairs share one fp32 tensor
    if retain_pairs is not None:
        retain_reference = token_logps_of("", model, "retain-reference", tokenizer, config, config.retain_data,
                                          retain_pairs, bf16, device)
        retain = RetainSet(retain_pairs, retain_reference, 2 * config.per_device_batch, config.pack == "on",
                           tokenizer.pad_token_id)
    if on_when_auto(config.gradient_checkpointing, device):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    engine = build_engine(model, config, config.resolved_learning_rate(), schedule.total_steps, bf16, device)
    reward_shift = RewardShift(config.delta_mode, config.delta_decay,
                               all_reduce=dist.all_reduce if world > 1 else None)

    output_dir = Path(config.output_dir)
    start_step = 0
    if config.resume:
        found = checkpoints(output_dir)
        path = (found[-1] if found else None) if config.resume == "latest" else Path(config.resume)
        if path is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {output_dir}")
        state = load_checkpoint(engine, path)
        start_step = state["step"]
        reward_shift.load_state_dict(state["reward_shift"])
        if is_main:
            print(f"resumed from {path} at step {start_step}")
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(output_dir, enabled=is_main)
    if retain is not None and start_step == 0:
        log.log(0, retain.measure(engine.module, device))  # the starting point: KL 0 up to float noise

    def trainer_state(step):
        return {"step": step, "reward_shift": reward_shift.state_dict(), "config": vars(config)}

    progress = tqdm(range(start_step, schedule.total_steps), desc="train", unit="step", disable=not is_main,
                    initial=start_step, total=schedule.total_steps)
    window, window_tokens, window_micro_batches, window_start = {}, 0, 0, time.perf_counter()
    for step in progress:
        for micro_step in range(config.grad_accum):
            indices = schedule.examples(step, micro_step, rank)
            batch = collate([pairs[i] for i in indices], config.pack == "on", tokenizer.pad_token_id).to(device)
            loss, metrics, num_tokens = step_loss(engine.module, batch, ref[indices] if ref is not None else None,
                                                  config, reward_shift)
            engine.backward(loss)
            engine.step()
            window = {name: window.get(name, 0) + value for name, value in metrics.items()}
            window_tokens += num_tokens
            window_micro_batches += 1
        done = step + 1
        row = {}
        if done % config.log_every == 0 or done == schedule.total_steps:
            row = mean_over_ranks({name: value / window_micro_batches for name, value in window.items()})
            elapsed = time.perf_counter() - window_start
            row.update({"grad_norm": float(engine.get_global_grad_norm() or 0.0), "lr": engine.get_lr()[0],
                        "tokens_per_s": window_tokens * world / elapsed, "epoch": step / schedule.steps_per_epoch})
            window, window_tokens, window_micro_batches, window_start = {}, 0, 0, time.perf_counter()
        if retain is not None and (done % config.retain_every == 0 or done == schedule.total_steps):
            began = time.perf_counter()
            row.update(retain.measure(engine.module, device))
            window_start += time.perf_counter() - began  # measuring is not training throughput
        if row:
            log.log(done, row)
            progress.set_postfix({name: f"{row[key]:.4g}" for name, key in PROGRESS_METRICS if key in row})
        if config.save_every and done % config.save_every == 0 and done < schedule.total_steps:
            save_checkpoint(engine, tokenizer, output_dir, f"checkpoint-{done}", trainer_state(done), rank)
            if is_main:
                prune_checkpoints(output_dir, config.keep_last)
    progress.close()

    final = save_checkpoint(engine, tokenizer, output_dir, "final", trainer_state(schedule.total_steps), rank)
    if eval_pairs is not None:
        results = evaluate(engine.module, eval_pairs, eval_ref, config, tokenizer.pad_token_id, device)
        log.log(schedule.total_steps, results)
        if is_main:
            print("evaluation: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    log.close()
    if is_main:
        plot_metrics(log.path, output_dir / "training.png")
        print(f"model saved to {final}; metrics in {log.path}; plot in {output_dir / 'training.png'}")


def main(argv=None):
    config = parse_config(argv)
    succeeded = False
    try:
        train(config)
        succeeded = True
    except (DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_distributed(succeeded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
