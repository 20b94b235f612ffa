"""benchmarks/bench_train.py builds its model where it runs, in the dtype it runs in."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import Qwen3Config

import bench_train  # benchmarks/ (tests/conftest.py)


class HostTensors(TorchDispatchMode):
    """The largest tensor any operation made on the CPU."""
    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for out in tree_flatten(result)[0]:
            if isinstance(out, torch.Tensor) and out.device.type == "cpu":
                self.largest = max(self.largest, out.numel())
        return result


def test_the_benchmark_model_is_built_on_its_device_in_its_dtype():
    """The meta device stands in for the GPU: no tensor of a weight's size may appear on the CPU (an
    fp32 model built there and then cast and moved would)."""
    config = Qwen3Config(vocab_size=5000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    with HostTensors() as host:
        model = bench_train.build_model(config, "sdpa", torch.device("meta"), torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}
    assert host.largest < 64 * 128, f"a tensor of {host.largest} elements was made on the CPU"
