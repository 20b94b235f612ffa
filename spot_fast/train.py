"""Train a causal LM with SPoT (or its baselines) on DeepSpeed.

    torchrun --nproc_per_node=K spot_fast/train.py [options]      # or: python spot_fast/train.py

With no options it runs the built-in demo: a tiny Qwen3-architecture model on the bundled pairs, on
the CPU if there is no GPU. The loop, top to bottom:
1. read and tokenize the pairs (bad input stops here, before anything is written);
2. load the model and replace its LM head by the fused log-prob head (logits are never formed);
3. reference log-probs: from the cache, or computed once with the starting weights and cached;
4. DeepSpeed engine (ZeRO-2 by default), AdamW, cosine schedule; resume if asked;
5. per micro-batch: sequence log-probs -> rewards -> (delta) -> loss -> backward; the engine steps
   at the accumulation boundary; metrics every ``log_every`` steps; atomic checkpoints;
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
from spot_fast.engine import barrier, build_engine, start_distributed, stop_distributed
from spot_fast.metrics import MetricsLog, plot_metrics
from spot_fast.models import load_model, load_tokenizer, model_identity
from spot_fast.policy import batch_logps, install_logprob_head
from spot_fast.reference_cache import ReferenceCache, compute_sequence_logps
from spot_kernels import RewardShift, implicit_reward, preference_loss


def on_when_auto(value, device):
    return value == "on" or (value == "auto" and device.type == "cuda")


def reference_logps(model, tokenizer, config, data_path, pairs, bf16, device, rank):
    """[num_pairs, 2] reference log-probs of ``pairs``: cached, or computed now by rank 0."""
    cache_dir = config.cache_dir or str(Path(config.output_dir).parent / ".reference_cache")
    cache = ReferenceCache(cache_dir, {
        "model": model_identity(config.model), "data": file_sha256(data_path), "max_length": config.max_length,
        "tokenizer": [tokenizer.name_or_path, len(tokenizer)], "chat_template": tokenizer.chat_template,
        "dtype": "bf16" if bf16 else "fp32",
    })
    if rank == 0 and cache.path.exists():
        print(f"reference log-probs reused from {cache.path}")
    elif rank == 0:
        logps = compute_sequence_logps(model, pairs, 2 * config.per_device_batch, config.pack == "on",
                                       tokenizer.pad_token_id, device, desc=f"reference log-probs ({Path(data_path).name})")
        cache.save(logps)
        print(f"reference log-probs computed and cached at {cache.path}")
    barrier()
    return cache.load().to(device)


def step_loss(model, batch, ref, config, reward_shift):
    """Loss of one micro-batch and its (detached) metrics. ``ref`` is [B, 2] or None for sft."""
    logps = batch_logps(model, batch)
    delta = torch.zeros((), device=logps.chosen.device)
    if ref is None:
        chosen_rewards = rejected_rewards = torch.zeros_like(logps.chosen)
    else:
        chosen_rewards = implicit_reward(logps.chosen, ref[:, 0], config.beta).detach()
        rejected_rewards = implicit_reward(logps.rejected, ref[:, 1], config.beta).detach()
        if config.loss == "spot_bco":
            delta = reward_shift.update(chosen_rewards, rejected_rewards)
    loss = preference_loss(
        config.loss, logps.chosen, logps.rejected,
        None if ref is None else ref[:, 0], None if ref is None else ref[:, 1],
        beta=config.beta, delta=delta, chosen_lengths=batch.chosen_lengths).mean()
    chosen_tokens = batch.seq_index < batch.num_pairs
    metrics = torch.stack([
        loss.detach(), chosen_rewards.mean(), rejected_rewards.mean(),
        (chosen_rewards - rejected_rewards).mean(), (chosen_rewards > rejected_rewards).float().mean(), delta.float(),
        logps.entropy[chosen_tokens].mean(), logps.target_is_argmax[chosen_tokens].float().mean(),
        torch.tensor(batch.padding_fraction, device=delta.device),
    ])
    return loss, metrics, batch.num_tokens


METRIC_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "delta",
                "chosen/entropy", "chosen/token_accuracy", "padding_fraction")


def mean_over_ranks(values):
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


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
    """Implicit rewards, margin and accuracy on held-out pairs (no grad)."""
    logps = compute_sequence_logps(model, pairs, 2 * config.per_device_batch, config.pack == "on", pad_id, device,
                                   desc="evaluation").to(device)
    chosen = implicit_reward(logps[:, 0], ref[:, 0], config.beta)
    rejected = implicit_reward(logps[:, 1], ref[:, 1], config.beta)
    return {"eval/rewards/chosen": chosen.mean().item(), "eval/rewards/rejected": rejected.mean().item(),
            "eval/rewards/margin": (chosen - rejected).mean().item(),
            "eval/rewards/accuracy": (chosen > rejected).float().mean().item()}


def train(config):
    tokenizer = load_tokenizer(config.model)
    pairs, data_stats = load_pairs(config.data, tokenizer, config.max_length)
    eval_pairs = load_pairs(config.eval_data, tokenizer, config.max_length)[0] if config.eval_data else None
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
        print(f"data: {data_stats.pairs} pairs, {data_stats.skipped_long_prompt} skipped (prompt longer than "
              f"max_length), {data_stats.truncated_completions} completions truncated, {left_out} left out per epoch; "
              f"{schedule.total_steps} optimizer steps on {world} process(es), {device.type}")

    model = load_model(config.model, dtype=torch.bfloat16 if bf16 else torch.float32)
    if on_when_auto(config.liger, device):
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    model = install_logprob_head(model, config.kernel_backend).to(device)
    needs_reference = config.loss != "sft"
    ref = reference_logps(model, tokenizer, config, config.data, pairs, bf16, device, rank) if needs_reference else None
    eval_ref = (reference_logps(model, tokenizer, config, config.eval_data, eval_pairs, bf16, device, rank)
                if eval_pairs is not None and needs_reference else None)
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

    def trainer_state(step):
        return {"step": step, "reward_shift": reward_shift.state_dict(), "config": vars(config)}

    progress = tqdm(range(start_step, schedule.total_steps), desc="train", unit="step", disable=not is_main,
                    initial=start_step, total=schedule.total_steps)
    window_metrics, window_tokens, window_micro_batches, window_start = None, 0, 0, time.perf_counter()
    for step in progress:
        for micro_step in range(config.grad_accum):
            indices = schedule.examples(step, micro_step, rank)
            batch = collate([pairs[i] for i in indices], config.pack == "on", tokenizer.pad_token_id).to(device)
            loss, metrics, num_tokens = step_loss(engine.module, batch, ref[indices] if ref is not None else None,
                                                  config, reward_shift)
            engine.backward(loss)
            engine.step()
            window_metrics = metrics if window_metrics is None else window_metrics + metrics
            window_tokens += num_tokens
            window_micro_batches += 1
        done = step + 1
        if done % config.log_every == 0 or done == schedule.total_steps:
            averaged = mean_over_ranks(window_metrics / window_micro_batches)
            values = dict(zip(METRIC_NAMES, averaged.tolist()))
            elapsed = time.perf_counter() - window_start
            values.update({"grad_norm": float(engine.get_global_grad_norm() or 0.0), "lr": engine.get_lr()[0],
                           "tokens_per_s": window_tokens * world / elapsed, "epoch": step / schedule.steps_per_epoch})
            log.log(done, values)
            progress.set_postfix(loss=f"{values['loss']:.4f}", margin=f"{values['rewards/margin']:.3f}",
                                 tok_s=f"{values['tokens_per_s']:.0f}")
            window_metrics, window_tokens, window_micro_batches, window_start = None, 0, 0, time.perf_counter()
        if config.save_every and done % config.save_every == 0 and done < schedule.total_steps:
            save_checkpoint(engine, tokenizer, output_dir, f"checkpoint-{done}", trainer_state(done), rank)
            if is_main:
                prune_checkpoints(output_dir, config.keep_last)
    progress.close()

    final = save_checkpoint(engine, tokenizer, output_dir, "final", trainer_state(schedule.total_steps), rank)
    if eval_ref is not None:
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
    try:
        train(config)
    except (DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
