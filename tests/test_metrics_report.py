"""``--report-to``: the rows of metrics.jsonl reach Weights & Biases (offline) under the same names and
steps; a report whose package is missing is refused by name."""
import json
import struct

import pytest

from spot_fast.metrics import MetricsLog, MetricsWindow

ROWS = [(1, {"loss": 1.25, "rewards/chosen": 0.5, "rewards/margin": -0.125, "grad_norm": 2.0}),
        (2, {"loss": 0.75, "rewards/chosen": 0.25, "rewards/margin": 0.375, "grad_norm": 1.5}),
        (4, {"retain/kl_k3": 0.0625})]


def wandb_records(path):
    """The records of a W&B transaction log (``run-ID.wandb``): a 7-byte header (``:W&B``, magic,
    version), then LevelDB-log blocks of 32 KiB whose chunks have a 7-byte header (crc32, length,
    type: 1 full, 2 first, 3 middle, 4 last) and never straddle a block (a tail under 7 bytes is padding)."""
    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        room = block - position % block
        if room < 7:
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:  # zero padding at the end of the file
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            yield pending
            pending = b""


def wandb_history(path):
    """(step, {name: value}) of every history record of the W&B run log ``path``."""
    from wandb.proto import wandb_internal_pb2

    history = []
    for data in wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            values = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.append((values.pop("_step"), {k: v for k, v in values.items() if not k.startswith("_")}))
    return history


def test_wandb_offline_receives_the_jsonl_rows(tmp_path, monkeypatch):
    """Once the log is closed, the W&B run's transaction log on disk holds every JSONL row (W&B's
    service process writes it in the background: closing waits for it, see ``WandbReport``)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLog(tmp_path, enabled=True, report_to="wandb", run_config={"loss": "spot_bco", "beta": 0.1})
    for step, values in ROWS:
        log.log(step, values)
    log.close()
    jsonl = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(row.pop("step"), row) for row in jsonl] == ROWS
    [run_log] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert wandb_history(run_log) == ROWS, f"W&B history in {run_log} ({run_log.stat().st_size} bytes) after close()"


def test_window_pools_each_metric_over_what_it_counts():
    """Two micro-batches: a token mean is pooled by tokens (not averaged per micro-batch), a pair
    mean by pairs, so a row does not depend on how the step's pairs were split."""
    window = MetricsWindow()
    window.add({"chosen/nll": 1.0, "loss": 2.0}, {"chosen/nll": 10, "loss": 3}, tokens=40, unshared_tokens=50)
    window.add({"chosen/nll": 4.0, "loss": 6.0}, {"chosen/nll": 30, "loss": 1}, tokens=60, unshared_tokens=50)
    row = window.row(world=1)
    assert row["chosen/nll"] == pytest.approx((1.0 * 10 + 4.0 * 30) / 40)
    assert row["loss"] == pytest.approx((2.0 * 3 + 6.0 * 1) / 4)
    assert row["tokens/forwarded"] == 100 and row["tokens/shared_fraction"] == pytest.approx(0.0)
