"""Host reads of device data, found on the CPU: a ``TorchFunctionMode`` that knows which tensors
would live on the accelerator and records every call that would make the host wait for one.

On a CPU every tensor is a host tensor, so "on the device" is tracked instead of read: a tensor is
*on the device* when it is one of the given ``device_tensors`` (the model's parameters), the result of
``.to(...)``/``.cuda()`` of a host tensor or of a factory given ``device=``, or the output of any
operation with an input on the device. Host bookkeeping that never touches the device (``collate``
building its index tensors from Python lists) stays a host tensor and is never counted.

Recorded, with the call site (the innermost frame outside torch and this file):
- reads of a device tensor's values: ``item``, ``tolist``, ``__bool__``, ``__float__``, ``__int__``,
  ``__index__``, ``numpy``, ``cpu``, and the operations whose output size depends on the values
  (``nonzero``, ``bincount``, ``unique``, ``masked_select``, boolean-mask indexing);
- copies of Python data to the device that wait for it: ``torch.tensor``/``as_tensor``/``new_tensor``
  given ``device=``, and indexing a device tensor with a Python list (torch copies the list over).

Limitation: on the CPU ``.to("cpu")`` of a device tensor cannot be told from a move to the device,
so it is not counted (``.cpu()`` is).
"""
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

T = torch.Tensor
READS = {T.item, T.tolist, T.__bool__, T.__float__, T.__int__, T.__index__, T.numpy, T.cpu, T.nonzero, torch.nonzero,
         T.bincount, torch.bincount, T.unique, torch.unique, T.masked_select, torch.masked_select}
COPIES_FROM_PYTHON = {torch.tensor, torch.as_tensor, T.new_tensor}
MOVES = {T.to, T.cuda}
TORCH_DIR = str(Path(torch.__file__).parent)
THIS_FILE = str(Path(__file__).resolve())


def call_site():
    """``file:line (function)`` of the innermost frame outside torch and this file (links resolved)."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(TORCH_DIR) and frame.filename != THIS_FILE:
            return f"{Path(frame.filename).resolve()}:{frame.lineno} ({frame.name})"
    return "?"


class HostReads(TorchFunctionMode):
    """``with HostReads(model.parameters()) as reads: ...``; then ``reads.sites`` counts, per call site,
    ``"what: file:line (function)"`` of every host read or wait (module docstring)."""

    def __init__(self, device_tensors=()):
        super().__init__()
        self.on_device = WeakIdKeyDictionary()
        for tensor in device_tensors:
            self.on_device[tensor] = True
        self.sites = Counter()

    def _record(self, what):
        self.sites[f"{what}: {call_site()}"] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        from_device = any(t in self.on_device for t in inputs)
        name = getattr(func, "__name__", str(func))
        if from_device and func in READS:
            self._record(f"reads a device tensor ({name})")
        if func in COPIES_FROM_PYTHON and kwargs.get("device") is not None:
            self._record(f"copies Python data to the device ({name})")
        if func is T.__getitem__ and args[0] in self.on_device:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, list) for i in index):
                self._record("indexes a device tensor with a Python list")
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                self._record("indexes a device tensor with a boolean mask")
        result = func(*args, **kwargs)
        moved = func in MOVES and any(isinstance(a, (torch.device, str)) for a in (*args[1:], kwargs.get("device")))
        if from_device or moved or kwargs.get("device") is not None:
            for output in tree_flatten(result)[0]:
                if isinstance(output, torch.Tensor):
                    self.on_device[output] = True
        return result
