"""Run by test_trl_integration.py under torchrun (2 processes, gloo): TRL's DPOTrainer under DeepSpeed
ZeRO-3 through accelerate, with TRL's own head and with SpotDPOTrainer, on the built-in tiny model
(partitioned from construction) and a reference model; rank 0 writes both runs' per-step logs as JSON
to the path given as the only argument."""
import json
import sys
from pathlib import Path

import torch.distributed as dist
import trl
from datasets import Dataset

from spot_fast.models import ASSETS, BUILTIN_MODEL, load_model, load_tokenizer
from spot_kernels.trl_integration import SpotDPOTrainer

ZERO3 = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},  # every parameter partitioned
         "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
         "gradient_clipping": 1.0, "bf16": {"enabled": False}}


def main(out):
    with open(ASSETS / "pairs.jsonl") as lines:
        rows = [json.loads(line) for _, line in zip(range(4), lines)]
    pairs = Dataset.from_list([{"prompt": r["question"], "chosen": r["gemini_corrected_answer"],
                                "rejected": r["original_answer"]} for r in rows])
    logs = {}
    for name, trainer_class in (("trl", trl.DPOTrainer), ("spot_kernels", SpotDPOTrainer)):
        config = trl.DPOConfig(output_dir=str(Path(out).parent / name), per_device_train_batch_size=1, max_steps=2,
                               learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True, bf16=False,
                               gradient_checkpointing=False, max_length=96, save_strategy="no", seed=0,
                               disable_tqdm=True, deepspeed=ZERO3)
        trainer = trainer_class(model=load_model(BUILTIN_MODEL, zero3_config=ZERO3),
                                ref_model=load_model(BUILTIN_MODEL, zero3_config=ZERO3), args=config,
                                train_dataset=pairs, processing_class=load_tokenizer(BUILTIN_MODEL))
        trainer.train()
        forwards = [trainer.model.forward, trainer.ref_model.module.forward]
        logs[name] = {"steps": [entry for entry in trainer.state.log_history if "loss" in entry],
                      "forwards": [f.__func__.__code__.co_filename for f in forwards]}
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(logs))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
