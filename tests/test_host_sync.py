"""No host synchronisation inside a training step, one batched read per logged step.

Real runs of the trainer (built-in model, bundled pairs, DeepSpeed; spot_bco on packed pair trees,
dpo on padded sequences, PEAR, spot_bco with varlen attention, with selective and with full
recompute) each take one ``optimizer_step`` of two micro-batches under ``HostReads``
(tests/helpers/host_reads.py), which records by call site every call that would make the host wait for the
accelerator (tests/helpers/step_host_reads.py; one subprocess for the runs, ~40 s). On a GPU each such call
stalls the queue of kernels; here it fails the test, naming the site. DeepSpeed's
and transformers' own reads are theirs, printed but not counted; the trainer's and the kernels' must
be none. The logged row's metrics and the gradient norm come to the host in one read. Batches and
reference rows bound for CUDA are copied from pinned memory (a copy from pageable memory blocks the
host however it is asked): the decision and the copies it leads to are checked without a GPU.
"""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from spot_fast.batching import collate, should_pin, to_device
from spot_fast.data import Pair
from spot_fast.host_syncs import HostSyncs

REPO = Path(__file__).resolve().parents[1]
OURS = (str(REPO / "spot_fast") + "/", str(REPO / "spot_kernels") + "/")
COMMON = "--max-steps 1 --per-device-batch 2 --grad-accum 2 --learning-rate 1e-3"
RUNS = {"spot_bco": f"{COMMON} --loss spot_bco",
        "dpo": f"{COMMON} --loss dpo --pack off --share-prefix off",
        "pear": f"{COMMON} --loss pear --pear-level block --pear-block-size 4",
        "varlen": f"{COMMON} --loss spot_bco --attention varlen",
        "selective": f"{COMMON} --loss spot_bco --gradient-checkpointing selective",
        "full recompute": f"{COMMON} --loss spot_bco --gradient-checkpointing on"}
# On the CPU varlen attention runs its reference, which reads each segment's bounds on the host; the CUDA
# kernel it stands in for takes them on the device (spot_fast/varlen_attention.py)
CPU_STAND_INS = ("(reference_varlen_attn)",)


@pytest.fixture(scope="module")
def reads(tmp_path_factory):
    root = tmp_path_factory.mktemp("host-reads")
    script = REPO / "tests" / "helpers" / "step_host_reads.py"
    done = subprocess.run([sys.executable, str(script), str(root / "reads.json"), str(root), *RUNS.values()],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((root / "reads.json").read_text())


def ours(sites):
    """The sites whose innermost frame outside torch is in spot_fast/ or spot_kernels/, except CPU stand-ins
    for CUDA kernels."""
    return {site: n for site, n in sites.items()
            if any(f": {root}" in site for root in OURS) and not site.endswith(CPU_STAND_INS)}


@pytest.mark.parametrize("objective", list(RUNS))
def test_a_training_step_reads_nothing_from_the_device(reads, objective):
    sites = reads[RUNS[objective]]["step"]
    print("host reads of DeepSpeed / transformers in the step:", *sorted(set(sites) - set(ours(sites))), sep="\n  ")
    assert ours(sites) == {}, "host reads inside the training step:\n" + "\n".join(ours(sites))


@pytest.mark.parametrize("objective", list(RUNS))
def test_a_logged_row_is_one_read(reads, objective):
    result = reads[RUNS[objective]]
    assert sum(result["row"].values()) == 1, f"the logged row reads the device more than once: {result['row']}"
    assert {"loss", "grad_norm", "chosen/nll"} <= set(result["row_names"])


def test_the_checkpointing_mode_reaches_the_model(reads):
    """train.py applies --gradient-checkpointing: a step of the same micro-batches runs the linear
    layers' matmuls of no recompute (auto on the CPU) under selective, and more under on."""
    matmuls = {name: reads[RUNS[name]]["matmuls"] for name in ("spot_bco", "selective", "full recompute")}
    assert matmuls["selective"] == matmuls["spot_bco"] < matmuls["full recompute"], matmuls


def a_synchronising_call():
    warnings.warn("called a synchronizing CUDA operation", UserWarning)  # what torch's sync debug mode warns


def test_sync_debug_counts_torch_sync_warnings_by_call_site(monkeypatch, tmp_path, recwarn):
    """``--sync-debug warn``'s recorder (spot_fast/host_syncs.py), fed the warning torch's sync debug mode
    gives at each synchronising call (the mode itself needs CUDA): counted by the line that made it;
    other warnings pass through."""
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    syncs = HostSyncs(torch.device("cuda"))
    with syncs.traced():
        for _ in range(3):
            a_synchronising_call()
        warnings.warn("something else", UserWarning)
    syncs.write(tmp_path / "host_syncs.json", steps=1)
    line = a_synchronising_call.__code__.co_firstlineno + 1
    site = f"{Path(__file__).resolve()}:{line} (a_synchronising_call)"
    assert json.loads((tmp_path / "host_syncs.json").read_text()) == {
        "traced": True, "steps": 1, "sites": [{"site": site, "calls": 3}]}
    assert [str(w.message) for w in recwarn] == ["something else"]


class RecordedCopies(TorchFunctionMode):
    """Within the block, ``Tensor.pin_memory`` marks its tensor pinned and ``Tensor.to`` records, by the
    source tensor, (pinned, non_blocking); both return the tensor itself, which stands for its pinned
    buffer and its copy, so copies to CUDA are recorded without a GPU."""

    def __init__(self):
        super().__init__()
        self.pinned, self.copies = set(), {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.pin_memory:
            self.pinned.add(id(args[0]))
            return args[0]
        if func is torch.Tensor.to:
            self.copies[id(args[0])] = (id(args[0]) in self.pinned, kwargs.get("non_blocking", False))
            return args[0]
        return func(*args, **kwargs)


def test_host_tensors_bound_for_cuda_are_copied_from_pinned_memory():
    """Every tensor of a batch (``Batch.to``) and a reference row (``to_device``) is pinned before its
    copy to a CUDA device and copied without blocking; bound for the CPU, none is pinned. The decision
    is ``should_pin``; the copies are recorded (``RecordedCopies``), not timed."""
    pairs = [Pair([1, 2, 3], [4, 5, 6], [4, 5, 7, 8], line=1, behavior_logps=torch.zeros(3)),
             Pair([2, 3], [9], [7, 9], line=2, behavior_logps=torch.zeros(1))]
    batch = collate(pairs, pack=True, pad_id=0, share_prefix=True)
    tensors = {name: value for name, value in vars(batch).items() if isinstance(value, torch.Tensor)}
    tensors["reference row"] = torch.zeros(2, 2)
    for device in ("cuda", torch.device("cuda", 1), "cpu"):
        pinned = {name: should_pin(tensor, device) for name, tensor in tensors.items()}
        to_cuda = torch.device(device).type == "cuda"
        assert pinned == dict.fromkeys(tensors, to_cuda), f"pinned flag of each host tensor bound for {device}: {pinned}"
        with RecordedCopies() as recorded:
            batch.to(device)
            to_device(tensors["reference row"], device)
        copies = {name: recorded.copies.get(id(tensor)) for name, tensor in tensors.items()}
        assert copies == dict.fromkeys(tensors, (to_cuda, True)), (
            f"(pinned flag, non_blocking) of each host tensor's copy to {device}: {copies}")
