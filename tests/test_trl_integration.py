"""The TRL integration against the real TRL: ``DPOTrainer`` with and without ``SpotDPOTrainer``
trains the same (every logged metric at every step, the weight updates) on the built-in tiny model and
bundled pairs; ``GRPOTrainer``'s per-token log-probs and entropies (at its temperature) equal TRL's own;
what cannot be served is refused at construction; TRL's own trainers built afterwards keep TRL's head, and
precomputed reference log-probs are cached apart from TRL's."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")
from datasets import Dataset, load_from_disk  # noqa: E402
from trl.trainer import utils as trl_utils  # noqa: E402

from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer  # noqa: E402
from spot_kernels import trl_integration  # noqa: E402
from spot_kernels.trl_integration import SpotDPOTrainer  # noqa: E402

STEPS = 2
REPO = Path(__file__).resolve().parents[1]
METRICS = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy")


@pytest.fixture(scope="module")
def pairs():
    with open(ASSETS / "pairs.jsonl") as lines:
        rows = [json.loads(line) for _, line in zip(range(2 * STEPS), lines)]
    return Dataset.from_list([{"prompt": r["question"], "chosen": r["gemini_corrected_answer"],
                               "rejected": r["original_answer"]} for r in rows])


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BUILTIN_MODEL)


def train(trainer_class, pairs, tokenizer, tmp_path, loss_type, precompute, peft=False):
    """Trains the tiny model for a few steps; returns (per-step logs, {name: (initial, final) weights})."""
    config = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=STEPS,
                           learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True, bf16=False,
                           gradient_checkpointing=False, max_length=96, loss_type=[loss_type], beta=0.1,
                           precompute_ref_log_probs=precompute, save_strategy="no", seed=0, disable_tqdm=True,
                           dataloader_num_workers=0)
    peft_config = None
    if peft:
        from peft import LoraConfig
        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    ref_model = None if precompute or peft else load_model(BUILTIN_MODEL)
    trainer = trainer_class(model=load_model(BUILTIN_MODEL), ref_model=ref_model, args=config, train_dataset=pairs,
                            processing_class=tokenizer, peft_config=peft_config)
    for model in (trainer.model.get_base_model() if peft else trainer.model, trainer.ref_model):
        assert model is None or fused_head(model) == expected_head(trainer_class), (
            f"{trainer_class.__name__} runs the {fused_head(model)} fused head")
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return logs, {name: (initial[name], p.detach().clone()) for name, p in trainer.model.named_parameters() if name in initial}


def fused_head(model):
    """Whose fused forward ``model`` runs: "spot_kernels" (the integration's), "trl" (TRL's own
    ``add_fused_lm_head``) or the file that defines it."""
    source = Path(model.forward.__func__.__code__.co_filename)
    return {Path(trl_utils.__file__): "trl", Path(trl_integration.__file__): "spot_kernels"}.get(source, str(source))


def expected_head(trainer_class):
    return "spot_kernels" if trainer_class.__module__ == "spot_kernels.trl_integration" else "trl"


@pytest.mark.parametrize("loss_type,precompute,peft", [
    ("sigmoid", False, False), ("sigmoid", True, False), ("bco_pair", False, False), ("bco_pair", True, False),
    ("sigmoid", False, True)])
def test_dpo_trains_as_trl_does(pairs, tokenizer, tmp_path, loss_type, precompute, peft):
    theirs = train(trl.DPOTrainer, pairs, tokenizer, tmp_path / "trl", loss_type, precompute, peft)
    ours = train(SpotDPOTrainer, pairs, tokenizer, tmp_path / "spot", loss_type, precompute, peft)
    assert len(ours[0]) == len(theirs[0]) == STEPS
    for step, (mine, reference) in enumerate(zip(*(logs for logs, _ in (ours, theirs)))):
        for metric in METRICS:
            # rewards are differences of sequence log-probs of ~200 nats: float noise of ~1e-5 absolute
            assert math.isclose(mine[metric], reference[metric], rel_tol=1e-5, abs_tol=5e-5), (step, metric)
    assert theirs[0][-1]["rewards/margins"] != 0  # the reference and the policy parted
    for name, (initial, final) in theirs[1].items():
        # Adam's first steps move a weight by about the learning rate whatever its gradient's size, so float
        # noise in a near-zero gradient component shows in that weight's update: compare the updates whole
        update, our_update = final - initial, ours[1][name][1] - ours[1][name][0]
        assert torch.equal(ours[1][name][0], initial), name
        assert (our_update - update).norm() <= 1e-3 * update.norm(), name


def test_what_needs_the_logits_is_refused(pairs, tokenizer, tmp_path):
    config = trl.DPOConfig(output_dir=str(tmp_path), use_weighting=True, report_to=[], use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="use_weighting=True"):
        SpotDPOTrainer(model=load_model(BUILTIN_MODEL), args=config, train_dataset=pairs, processing_class=tokenizer)
    model = load_model(BUILTIN_MODEL)
    model.config.final_logit_softcapping = 30.0
    config = trl.DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, max_length=96)
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        SpotDPOTrainer(model=model, ref_model=load_model(BUILTIN_MODEL), args=config, train_dataset=pairs,
                       processing_class=tokenizer)


def dpo_trainer(trainer_class, pairs, tokenizer, tmp_path, model=None, precompute=False):
    """A DPO trainer of the tiny model (``model`` if given) with a reference model, or precomputed
    reference log-probs; built, not trained."""
    config = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True,
                           bf16=False, max_length=96, precompute_ref_log_probs=precompute, disable_tqdm=True)
    return trainer_class(model=model or load_model(BUILTIN_MODEL),
                         ref_model=None if precompute else load_model(BUILTIN_MODEL), args=config,
                         train_dataset=pairs, processing_class=tokenizer)


def test_trl_trainers_built_after_ours_run_trls_own_head(pairs, tokenizer, tmp_path):
    """The integration puts its head in TRL's place only while one of its trainers is constructed,
    also when that construction is refused: every TRL trainer built afterwards in the same process
    runs TRL's own fused head (else a side-by-side comparison compares the integration with itself)."""
    from spot_kernels.trl_integration import SpotGRPOTrainer

    dpo_trainer(SpotDPOTrainer, pairs, tokenizer, tmp_path)
    grpo_trainer(SpotGRPOTrainer, pairs, tokenizer, tmp_path)
    softcapped = load_model(BUILTIN_MODEL)
    softcapped.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):  # refused inside TRL's construction
        dpo_trainer(SpotDPOTrainer, pairs, tokenizer, tmp_path, model=softcapped)
    for trainer in (dpo_trainer(trl.DPOTrainer, pairs, tokenizer, tmp_path),
                    grpo_trainer(trl.GRPOTrainer, pairs, tokenizer, tmp_path)):
        for role, model in (("policy", trainer.model), ("reference", trainer.ref_model)):
            assert model is None or fused_head(model) == "trl", (
                f"{type(trainer).__name__} built after SpotDPOTrainer and SpotGRPOTrainer: its {role} model runs "
                f"the {fused_head(model)} fused head, not TRL's")


def reference_cache_file(trainer):
    """The name of the file that holds the trainer's precomputed reference log-probs (the columns TRL
    appends to the training set)."""
    files = [entry["filename"] for entry in trainer.train_dataset.cache_files]
    [path] = [f for f in files if Dataset.from_file(f).column_names == ["ref_chosen_logps", "ref_rejected_logps"]]
    return Path(path).name


def test_precomputed_reference_is_cached_apart_from_trls(pairs, tokenizer, tmp_path):
    """For the same dataset and reference model, SpotDPOTrainer keeps its precomputed reference
    log-probs under a cache key of its own: TRL's trainer and ours write (and find) different files.
    Each trainer built again finds its own file again, so the keys are cache keys, not fresh names,
    and TRL's key is the same before and after one of ours was built."""
    pairs.save_to_disk(tmp_path / "pairs")
    on_disk = load_from_disk(tmp_path / "pairs")  # datasets caches maps beside a dataset's files, not in memory
    keys = {}
    for trainer_class in (trl.DPOTrainer, SpotDPOTrainer, trl.DPOTrainer, SpotDPOTrainer):
        trainer = dpo_trainer(trainer_class, on_disk, tokenizer, tmp_path / "out", precompute=True)
        keys.setdefault(trainer_class.__name__, []).append(reference_cache_file(trainer))
    (theirs, again), (ours, ours_again) = keys["DPOTrainer"], keys["SpotDPOTrainer"]
    assert theirs == again, f"TRL's DPOTrainer built after SpotDPOTrainer uses another reference cache key: {keys}"
    assert ours == ours_again, f"SpotDPOTrainer's reference cache key differs between identical trainers: {keys}"
    assert ours != theirs, f"SpotDPOTrainer's precomputed reference log-probs share TRL's cache key: {keys}"


@pytest.fixture(scope="module")
def rollouts(pairs, tokenizer):
    """Prompt + completion token ids of three bundled answers, right-padded, and their mask."""
    texts = [row["prompt"] + row["chosen"] for row in pairs.select(range(3))]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"][:, :80], batch["attention_mask"][:, :80]


def grpo_trainer(trainer_class, pairs, tokenizer, tmp_path, **options):
    config = trl.GRPOConfig(**{**dict(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2,
                                      max_completion_length=8, temperature=0.7, report_to=[], use_cpu=True, bf16=False,
                                      gradient_checkpointing=False, disable_tqdm=True), **options})
    return trainer_class(model=load_model(BUILTIN_MODEL), reward_funcs=lambda completions, **_: [0.0] * len(completions),
                         args=config, train_dataset=pairs.select_columns(["prompt"]), processing_class=tokenizer)


def test_grpo_logps_and_entropies_equal_trls(pairs, tokenizer, tmp_path, rollouts):
    """Per-token log-probs and entropies at the sampling temperature, through the trainer's own method."""
    from spot_kernels.trl_integration import SpotGRPOTrainer

    input_ids, attention_mask = rollouts
    results = []
    for trainer_class in (trl.GRPOTrainer, SpotGRPOTrainer):
        trainer = grpo_trainer(trainer_class, pairs, tokenizer, tmp_path)
        assert fused_head(trainer.model) == expected_head(trainer_class), (
            f"{trainer_class.__name__} runs the {fused_head(trainer.model)} fused head")
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, logits_to_keep=40, compute_entropy=True)
        logps.sum().backward()
        results.append((logps.detach(), entropies, trainer.model.lm_head.weight.grad))
    (theirs, their_entropies, their_grad), (ours, our_entropies, our_grad) = results
    assert theirs.shape == ours.shape == (3, 40)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_entropies, their_entropies, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-4, atol=1e-6)


def test_grpo_under_bf16_autocast_keeps_the_fp32_heads_precision(pairs, tokenizer, tmp_path, rollouts):
    """``bf16=True, cast_lm_head_to_fp32=True``: inside the trainer's autocast (its accelerator's) the
    log-probs and entropies through our head equal TRL's fp32 head's, not values from bf16 logits."""
    from spot_kernels.trl_integration import SpotGRPOTrainer

    input_ids, attention_mask = rollouts
    results = {}
    for trainer_class in (trl.GRPOTrainer, SpotGRPOTrainer):
        trainer = grpo_trainer(trainer_class, pairs, tokenizer, tmp_path, bf16=True, cast_lm_head_to_fp32=True)
        with torch.no_grad(), trainer.accelerator.autocast():
            assert torch.is_autocast_enabled("cpu"), "the trainer's accelerator does not autocast"
            results[trainer_class.__name__] = trainer._get_per_token_logps_and_entropies(
                trainer.model, input_ids, attention_mask, logits_to_keep=40, compute_entropy=True)[:2]
    for index, name in enumerate(("log-probs", "entropies")):
        torch.testing.assert_close(results["SpotGRPOTrainer"][index], results["GRPOTrainer"][index], rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{name} under bf16 autocast, ours against TRL's fp32 head: {m}")


def test_grpo_entropy_bonus_is_refused(pairs, tokenizer, tmp_path):
    from spot_kernels.trl_integration import SpotGRPOTrainer

    with pytest.raises(ValueError, match="entropy bonus"):
        grpo_trainer(SpotGRPOTrainer, pairs, tokenizer, tmp_path, entropy_coef=0.01)


def test_dpo_under_zero3_trains_as_trl_does(tmp_path):
    """Two CPU processes, DeepSpeed ZeRO-3 through accelerate, every parameter partitioned, the head
    included (about 25 s): the run logs what TRL's own head logs at every step."""
    out = tmp_path / "logs.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "tests" / "helpers" / "trl_zero3_ranks.py"), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    logs = json.loads(out.read_text())
    assert all(name.endswith("trl_integration.py") for name in logs["spot_kernels"]["forwards"])
    assert not any(name.endswith("trl_integration.py") for name in logs["trl"]["forwards"])
    ours, theirs = logs["spot_kernels"]["steps"], logs["trl"]["steps"]
    assert len(ours) == len(theirs) == 2 and theirs[-1]["rewards/margins"] != 0
    for step, (mine, reference) in enumerate(zip(ours, theirs)):
        for metric in METRICS:
            assert math.isclose(mine[metric], reference[metric], rel_tol=1e-5, abs_tol=5e-5), (step, metric)
