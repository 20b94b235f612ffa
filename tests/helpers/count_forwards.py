"""Runs ``spot_fast/train.py`` counting the DeepSpeed engine's forwards in each optimizer step (for test_zero3.py).

    python tests/helpers/count_forwards.py REPORT [train.py options]

Each rank writes ``REPORT-rank<r>.json``: per optimizer step, the micro-batches it planned and how many
times ``DeepSpeedEngine.forward`` ran during it. ZeRO-3's bookkeeping of the gradient accumulation
boundary lives in hooks the engine's forward sets up, so training must call the engine (not
``engine.module``) once per micro-batch; scoring calls ``engine.module`` and runs outside the steps.
"""
import json
import os
import sys
from pathlib import Path

from deepspeed.runtime.engine import DeepSpeedEngine

import spot_fast.train as train


def install():
    """Counts engine forwards per optimizer step; returns the list the steps are appended to."""
    forwards, steps = [0], []
    engine_forward, optimizer_step = DeepSpeedEngine.forward, train.optimizer_step

    def counted_forward(self, *args, **kwargs):
        forwards[0] += 1
        return engine_forward(self, *args, **kwargs)

    def counted_step(run, step, window):
        planned = run.order.micro_batches(step, run.rank, run.pair_tokens, run.config.max_tokens_per_batch)
        before = forwards[0]
        learning_rate = optimizer_step(run, step, window)
        steps.append({"step": step + 1, "micro_batches": len(planned), "engine_forwards": forwards[0] - before})
        return learning_rate

    DeepSpeedEngine.forward = counted_forward
    train.optimizer_step = counted_step
    return steps


if __name__ == "__main__":
    report, *argv = sys.argv[1:]
    steps = install()
    code = train.main(argv)
    Path(f"{report}-rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(steps))
    sys.exit(code)
