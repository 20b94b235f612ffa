"""``benchmarks/bench_activation_memory.py``: its accounting holds what autograd keeps, and at toy size
the checkpointing modes keep what they say, in order: off > selective > selective-half > on."""
import json

import torch

import bench_activation_memory  # benchmarks/ (tests/conftest.py)


def test_accounting_holds_what_autograd_saved_and_the_output():
    """Without checkpointing, the bytes ``LiveBytes`` finds alive when the forward returns are exactly
    the storages autograd saved for the backward (seen through saved-tensor hooks) plus the output's."""
    body, inputs = bench_activation_memory.cpu_model(toy=True), bench_activation_memory.cpu_inputs(64)
    existing = [*body.parameters(), *body.buffers(), inputs["input_ids"]]
    outside = {t.untyped_storage().data_ptr() for t in existing}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in outside:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with bench_activation_memory.LiveBytes(existing) as live:
            hidden = body(**inputs, use_cache=False).last_hidden_state
            live.mark("forward")
    saved[hidden.untyped_storage().data_ptr()] = hidden.untyped_storage().nbytes()
    assert live.held(live.marks["forward"]) == sum(saved.values()) > 0


def test_toy_run_keeps_less_the_more_a_mode_recomputes(tmp_path):
    report = bench_activation_memory.main(["--toy", "--no-rss", "--out", str(tmp_path / "memory")])
    assert json.loads((tmp_path / "memory.json").read_text())["cpu"]["tokens"] == 64
    assert "| selective |" in (tmp_path / "memory.md").read_text()
    per_token = report["cpu"]["bytes_per_token"]
    for measure in ("held_after_forward", "peak"):
        kept = {mode: per_token[mode][measure] for mode in bench_activation_memory.MODES}
        assert kept["on"] < kept["selective-half"] < kept["selective"] < kept["off"], (measure, kept)
