"""What a new user runs first: the README's CPU demos of PEAR at the block level and of training on the
rectified pairs, and `make bench`."""
import json
import shlex
from pathlib import Path

import common  # benchmarks/common.py (tests/conftest.py)
from spot_fast.config import parse_config
from spot_fast.data import load_pairs
from spot_fast.engine import warmup_steps
from spot_fast.example_order import ExampleOrder
from spot_fast.models import BUILTIN_MODEL, load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def readme_command(*fragments):
    """The README line that runs ``spot_fast/train.py`` with all ``fragments``, as argv after the script."""
    lines = [line for line in (REPO / "README.md").read_text().splitlines()
             if "spot_fast/train.py" in line and all(f in line for f in fragments)]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0], comments=True)
    assert words[:2] == [".venv/bin/python", "spot_fast/train.py"], words  # says which python
    return words[2:]


def test_readme_pear_block_demo_splits_the_bundled_answers():
    """With a block at least as long as an answer, all of the answer is one block ending at its last token,
    so every weight is gamma^0 * exp(0) = 1 and the demo is plain SFT: the block size must split them all."""
    config = parse_config(readme_command("--loss pear", "--pear-level block"))
    assert config.pear_level == "block"
    pairs = load_pairs(config.data, load_tokenizer(BUILTIN_MODEL), config.max_length, with_rejected=False)[0]
    shortest = min(len(pair.chosen_ids) for pair in pairs)
    assert len(pairs) > 0 and config.pear_block_size < shortest


def test_readme_rectify_demo_trains_real_steps():
    """The README trains on the rectification demo's pairs, one per answer it elicits: the batch must
    leave many optimizer steps (at the default 32 pairs per step the 48 pairs are 2 steps, the first at
    learning rate 0 during warm-up, and the loss does not move)."""
    elicit = next(line for line in (REPO / "README.md").read_text().splitlines()
                  if line.startswith(".venv/bin/spot-fast-rectify elicit"))
    words = shlex.split(elicit)
    problems = sum(1 for line in (REPO / words[words.index("--problems") + 1]).read_text().splitlines() if line.strip())
    pairs = problems * int(words[words.index("--samples") + 1])
    config = parse_config(readme_command("--data runs/rect/pairs.jsonl"))
    order = ExampleOrder(pairs, config.per_device_batch, config.grad_accum, 1, config.epochs, config.seed)
    assert order.total_steps >= 20 and warmup_steps(order.total_steps, config.warmup_ratio) <= 2


def test_bench_writes_new_results_beside_the_committed_ones():
    committed = sorted(common.RESULTS_DIR.glob("*.json"))
    assert committed
    for path in committed:
        device = json.loads(path.read_text())["device"]["name"]
        new = common.new_results_path(device)
        assert new.parent == common.RESULTS_DIR and not new.exists()
        assert new.name.startswith(common.slug(device) + "-")
