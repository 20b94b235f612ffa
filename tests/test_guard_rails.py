"""What a user hits first, refused early with one line that names the problem: bad options (flags
and YAML), a resume with other settings, an output directory that holds another run, an unwritable
output directory, undecodable data, a model directory without a tokenizer or chat template, and
hub names resolved offline from the local cache; and what must not be refused (a byte-order mark)."""
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spot_fast import run_dir
from spot_fast import train as train_module
from spot_fast.config import DEMO_EPOCHS, DEMO_GRAD_ACCUM, DEMO_LEARNING_RATE, RESUME_SAFE, ConfigError, TrainConfig, parse_config, validate
from spot_fast.data import DataError, load_pairs
from spot_fast.jsonl import InputError, read_jsonl
from spot_fast.models import BUILTIN_MODEL, ModelError, load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, message", [
    (["--learning-rate=-1e-6"], "--learning-rate must be > 0"),
    (["--learning-rate", "0"], "--learning-rate must be > 0"),
    (["--model", "/models/qwen3-8b"], "--model /models/qwen3-8b needs --data: the bundled demo pairs are the default "
                                      "for the built-in model only"),
    (["--beta", "-0.1"], "--beta must be > 0"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--max-steps", "-3"], "--max-steps must be >= 0"),
    (["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1]"),
    (["--per-device-batch", "0"], "--per-device-batch must be >= 1"),
    (["--grad-accum", "0"], "--grad-accum must be >= 1"),
    (["--delta-decay", "1"], "--delta-decay must be in [0, 1)"),
    (["--adam-beta2", "1.0"], "--adam-beta2 must be in [0, 1)"),
    (["--pear-weight-min", "5", "--pear-weight-max", "1"], "PEAR options"),
])
def test_bad_flags_are_refused_naming_the_option(argv, message):
    with pytest.raises(SystemExit) as refused:
        parse_config(argv)
    assert message in str(refused.value)


@pytest.mark.parametrize("yaml_text, message", [
    ("learning_rate: -1\n", "option learning_rate must be > 0"),
    ("epochs: two\n", "option epochs: expected int, got 'two'"),
    ("epochs: 1.5\n", "option epochs: expected int, got 1.5"),
    ("loss: ipo\n", "option loss: 'ipo' is not one of"),
    ("beta: [1]\n", "option beta: expected float"),
    ("per_device_batch: 0\n", "option per_device_batch must be >= 1"),
    ("overwrite: 1\n", "option overwrite: expected bool"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_yaml_values_are_refused_naming_the_file_and_option(tmp_path, yaml_text, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(SystemExit) as refused:
        parse_config(["--config", str(path)])
    assert str(path) in str(refused.value) and message in str(refused.value)


def test_yaml_numbers_are_typed_and_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-6\nbeta: 1\nepochs: 3\nloss: dpo\n")  # YAML reads 1e-6 as a string
    config = parse_config(["--config", str(path), "--epochs", "1"])
    assert config.learning_rate == 1e-6 and isinstance(config.beta, float) and config.epochs == 1 and config.loss == "dpo"


def test_the_default_learning_rate_is_resolved_to_the_rate_used(tmp_path, capsys):
    """The default rate depends on the model; the config holds the rate the run uses (what a checkpoint
    stores and a resume compares), and --help says what the default is."""
    assert parse_config([]).learning_rate == DEMO_LEARNING_RATE == 1e-2
    assert parse_config(["--model", "/models/qwen3-8b", "--data", "pairs.jsonl"]).learning_rate == 1e-6
    assert parse_config(["--learning-rate", "5e-4"]).learning_rate == 5e-4
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    assert "(default: 1e-6, or 1e-2 for the built-in model)" in " ".join(capsys.readouterr().out.split())
    fake_checkpoint(tmp_path, 2, **DEMO)
    assert run_dir.prepare(parse_config(["--output-dir", str(tmp_path), "--resume", "latest", "--learning-rate", "1e-2"]),
                           world=1) == tmp_path / "checkpoint-2"
    with pytest.raises(ConfigError, match="learning_rate: 0.01 in the checkpoint, 0.001 now"):
        run_dir.prepare(parse_config(["--output-dir", str(tmp_path), "--resume", "latest", "--learning-rate", "1e-3"]),
                        world=1)


def test_a_checkpoint_that_stored_0_for_the_default_rate_stored_the_models_default(tmp_path):
    fake_checkpoint(tmp_path, 2, **{**DEMO, "learning_rate": 0.0})  # the built-in model's default then: 2e-3
    assert run_dir.prepare(parse_config(["--output-dir", str(tmp_path), "--resume", "latest", "--learning-rate", "2e-3"]),
                           world=1)
    with pytest.raises(ConfigError, match="learning_rate: 0.002 in the checkpoint, 0.001 now"):
        run_dir.prepare(parse_config(["--output-dir", str(tmp_path), "--resume", "latest", "--learning-rate", "1e-3"]),
                        world=1)


# what parse_config resolves for the built-in model where the options leave them out
DEMO = {"learning_rate": DEMO_LEARNING_RATE, "grad_accum": DEMO_GRAD_ACCUM, "epochs": DEMO_EPOCHS}


def fake_checkpoint(output_dir, step, world=1, **settings):
    path = Path(output_dir) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    config = TrainConfig(output_dir=str(output_dir), **settings)
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": world, "config": vars(config)}))
    return path


def test_a_resume_with_other_settings_is_refused_naming_each(tmp_path):
    fake_checkpoint(tmp_path, 2, learning_rate=1e-6, loss="spot_bco", grad_accum=8)
    changed = TrainConfig(output_dir=str(tmp_path), resume="latest", learning_rate=2e-6, loss="dpo", grad_accum=8)
    with pytest.raises(ConfigError) as refused:
        run_dir.prepare(changed, world=1)
    message = str(refused.value)
    assert "learning_rate: 1e-06 in the checkpoint, 2e-06 now" in message and "loss: 'spot_bco'" in message
    assert "grad_accum" not in message
    with pytest.raises(ConfigError, match=r"world size \(processes\): 1 in the checkpoint, 2 now"):
        run_dir.prepare(TrainConfig(output_dir=str(tmp_path), resume="latest", learning_rate=1e-6, grad_accum=8), world=2)


def test_a_resume_may_change_the_safe_settings(tmp_path):
    fake_checkpoint(tmp_path, 2, learning_rate=1e-6)
    safe = TrainConfig(output_dir=str(tmp_path), resume="latest", learning_rate=1e-6, max_steps=50, log_every=5,
                       save_every=10, keep_last=4, cache_dir=str(tmp_path / "c"), retain_every=3)
    assert run_dir.prepare(safe, world=1) == tmp_path / "checkpoint-2"
    assert {"max_steps", "log_every", "save_every", "keep_last"} <= set(RESUME_SAFE)
    with pytest.raises(ConfigError, match="--resume latest: no checkpoint in"):
        run_dir.prepare(TrainConfig(output_dir=str(tmp_path / "empty"), resume="latest"), world=1)


# README.md ("Checkpoints"): what a resume may change, besides --resume and --overwrite themselves
DOCUMENTED_RESUME_SAFE = {"output_dir", "cache_dir", "log_every", "save_every", "keep_last", "retain_data",
                          "retain_every", "eval_data", "eval_data_split", "eval_every", "gradient_checkpointing", "report_to", "lora_save_merged",
                          "max_steps", "resume", "overwrite", "sync_debug", "save_optimizer_in_final"}
# what an option needs besides itself to be valid; the checkpoint has it too, so only the option differs
NEEDS = {"load_in_4bit": {"lora_r": 4}, "max_prompt_length": {"render": "trl020"}}


def test_the_options_a_resume_may_change_are_the_documented_ones():
    assert set(RESUME_SAFE) == DOCUMENTED_RESUME_SAFE, (
        f"RESUME_SAFE adds {sorted(set(RESUME_SAFE) - DOCUMENTED_RESUME_SAFE)} and lacks "
        f"{sorted(DOCUMENTED_RESUME_SAFE - set(RESUME_SAFE))}: a resume could change what the run computes")


def another_valid_value(f):
    """A valid value of option ``f`` other than its default."""
    if "choices" in f.metadata:
        return next(choice for choice in f.metadata["choices"] if choice != f.default)
    if isinstance(f.default, bool):
        return not f.default
    if isinstance(f.default, int):
        return f.default + 1
    if isinstance(f.default, float):
        return f.default / 2 if f.default else 1e-3
    return "q_proj" if f.name == "lora_targets" else f"another-{f.name}"


@pytest.mark.parametrize("option", [f.name for f in dataclasses.fields(TrainConfig) if f.name not in DOCUMENTED_RESUME_SAFE])
def test_a_resume_that_changes_any_other_option_is_refused_naming_it(tmp_path, option):
    """A checkpoint written at the defaults; the same settings but ``option`` at another valid value:
    refused, naming the option, before anything is loaded."""
    [f] = [f for f in dataclasses.fields(TrainConfig) if f.name == option]
    needs = NEEDS.get(option, {})
    fake_checkpoint(tmp_path, 2, **needs)
    changed = {**dataclasses.asdict(TrainConfig(output_dir=str(tmp_path), **needs)), "resume": "latest",
               option: another_valid_value(f)}
    config = validate(changed, sources={})
    with pytest.raises(ConfigError, match=re.escape(f"other settings ({option}: {getattr(TrainConfig(), option)!r} in the checkpoint, ")):
        run_dir.prepare(config, world=1)


def test_a_fresh_run_refuses_another_runs_results_unless_overwrite(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "final").mkdir()
    fake_checkpoint(tmp_path, 3)
    assert train_module.main(["--output-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert f"--output-dir {tmp_path} holds another run's results (metrics.jsonl, final, checkpoint-3)" in error
    assert "--overwrite" in error and "log-probs" not in error  # refused before any work
    config = TrainConfig(output_dir=str(tmp_path), overwrite=True)
    assert run_dir.prepare(config, world=1) is None
    run_dir.delete_previous_results(tmp_path)
    assert run_dir.previous_results(tmp_path) == []


def test_an_unwritable_output_dir_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert train_module.main(["--output-dir", str(tmp_path / "a-file" / "run")]) == 1
    assert f"--output-dir {tmp_path / 'a-file' / 'run'} is not writable" in capsys.readouterr().err


def test_bytes_that_are_not_utf8_are_reported_with_their_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}).encode() + b"\n"
                     + b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_pairs(path, load_tokenizer(BUILTIN_MODEL), 64)


def test_a_byte_order_mark_at_the_start_of_a_jsonl_file_is_skipped(tmp_path):
    """Training data and the rectification/evaluation inputs alike; one elsewhere is still an error."""
    lines = [json.dumps({"id": i, "prompt": "a", "chosen": "b", "rejected": "c"}) for i in range(2)]
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    marked.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    assert ([p.prompt_ids for p in load_pairs(marked, tokenizer, 64)[0]]
            == [p.prompt_ids for p in load_pairs(plain, tokenizer, 64)[0]])
    assert [line.record for line in read_jsonl(marked)] == [line.record for line in read_jsonl(plain)]
    marked.write_text(lines[0] + "\n\ufeff" + lines[1] + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{marked}:2: invalid JSON"):
        load_pairs(marked, tokenizer, 64)
    with pytest.raises(InputError, match=r"marked.jsonl:2.*invalid JSON"):
        list(read_jsonl(marked))


def test_a_model_directory_without_tokenizer_or_chat_template(tmp_path):
    load_model(BUILTIN_MODEL).save_pretrained(tmp_path / "model")
    with pytest.raises(ModelError, match=rf"'{tmp_path / 'model'}' has no tokenizer \(none of tokenizer.json"):
        load_tokenizer(str(tmp_path / "model"))
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelError, match="has no chat template"):
        load_tokenizer(str(tmp_path / "model"))


def test_hub_names_resolve_from_the_local_cache_offline(tmp_path):
    """With HF_HUB_OFFLINE=1 an 'owner/name' in the local cache loads as transformers would load it;
    one that is not there is one line that says where it looked."""
    snapshot = tmp_path / "hub" / "models--spotfast--tiny" / "snapshots" / ("0" * 40)
    load_model(BUILTIN_MODEL).save_pretrained(snapshot)
    load_tokenizer(BUILTIN_MODEL).save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    script = ("from spot_fast.models import load_model, load_tokenizer, ModelError\n"
              "print(len(load_tokenizer('spotfast/tiny')), load_model('spotfast/tiny').config.num_hidden_layers)\n"
              "try:\n    load_model('spotfast/absent')\nexcept ModelError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"{len(load_tokenizer(BUILTIN_MODEL))} 2"
    assert lines[-1].startswith("the model of 'spotfast/absent' could not be loaded from the local Hugging Face cache")


def test_options_a_checkpoint_predates_count_as_their_defaults(tmp_path):
    path = fake_checkpoint(tmp_path, 2)
    state = json.loads((path / "trainer_state.json").read_text())
    del state["config"]["render"], state["config"]["share_prefix"]  # saved before these options existed
    (path / "trainer_state.json").write_text(json.dumps(state))
    assert run_dir.prepare(TrainConfig(output_dir=str(tmp_path), resume="latest"), world=1) == path
    with pytest.raises(ConfigError, match="render: 'spot-fast' in the checkpoint, 'trl020' now"):
        run_dir.prepare(TrainConfig(output_dir=str(tmp_path), resume="latest", render="trl020"), world=1)
