"""What a decoder layer's backward recomputes: ``--gradient-checkpointing auto|on|selective|selective-half|off``.

- ``off``: nothing; the forward keeps every tensor each layer's backward reads.
- ``on`` (full recompute): transformers' checkpointing of every decoder layer (non-reentrant): the
  forward keeps each layer's input only and the backward runs the layer's forward again, every matmul
  and the attention included. Least memory; the recompute is about a fifth of an 8B step's FLOPs
  (``benchmarks/results/flops.md``).
- ``selective``: the same checkpointed layers with selective checkpointing and an op policy, as
  torchtitan's op-level selective activation checkpointing: the forward also keeps the outputs of the
  compute-heavy ops (``saved_ops()``), and the backward's recompute runs only the cheap ops between
  them (RMSNorms, the rotary embedding, SiLU and the gate product, residual adds, casts, views),
  taking the kept outputs instead of running a matmul or the attention again.
- ``selective-half``: torchtitan's op policy as it is: ``selective``, but every second ``aten.mm`` of a
  layer is recomputed rather than kept (numbered per layer, separately in the forward and in the
  recompute, so both pick the same ops); in a Qwen3 layer the k, o and up projections.
- ``auto``: ``on`` with CUDA, ``off`` on the CPU.

``saved_ops()`` (those this torch has):

- ``aten.mm``, ``aten.addmm``, ``aten.bmm``: the linear layers (q, k, v, o, gate, up, down; LoRA's A and
  B) and SDPA's math path (its two batched matmuls);
- SDPA's fused kernels: ``_scaled_dot_product_flash_attention``, ``_scaled_dot_product_efficient_attention``,
  ``_scaled_dot_product_cudnn_attention`` (CUDA) and ``_scaled_dot_product_flash_attention_for_cpu``;
- ``torch_attn::_varlen_attn``, the custom op behind ``torch.nn.attention.varlen.varlen_attn``
  (``--attention varlen`` on CUDA), where this torch has it;

(``--attention flex`` runs FlexAttention as compiled code, which no op policy sees: its attention is
recomputed, as under ``on``; not run on a GPU with a selective mode yet.)

Why these: they are all of a layer's FLOPs as the FLOPs counter sees them (the rest is elementwise
work, bound by memory traffic), so with them kept the recompute runs no matmul and no attention; and
their outputs are a minority of what ``off`` keeps: the normalized inputs of the projections, the
rotated queries and keys, SiLU's input and output and the gate product, each as wide as a matmul
output, are recomputed instead. ``benchmarks/results/activation-memory-<machine>.md`` has the bytes per token
each mode keeps, ``benchmarks/results/flops.md`` the FLOPs each recomputes.

How: ``torch.utils.checkpoint.checkpoint``'s ``context_fn`` gives the forward and the recompute one
``TorchDispatchMode`` each (``selective_context``). The forward's keeps a detached alias of every
saved op's output, in call order; the recompute's hands them back in the same order (checking the op
and that nothing wrote to the tensor since) and runs every other op. That is the contract of torch's
``create_selective_checkpoint_contexts`` with this policy (``MUST_SAVE`` for the saved ops,
``PREFER_RECOMPUTE`` for the rest), with one difference: torch's numbers every op of the region and
requires the recompute to run the forward's ops exactly, which ZeRO-3 breaks. DeepSpeed gathers a
layer's partitioned weights in hooks inside the checkpointed region, in the recompute where the
forward found them gathered already (prefetched), and torch's modes stop there
("c10d._allgather_base_.default encountered during backward but not found in storage"). Here only
the saved ops are numbered, so whatever else the recompute runs runs.

Gradients: the recompute runs the forward's ops on the same inputs in the same order, so every mode
gives the same gradients (tests/test_activation_checkpointing.py, float64).
"""
import collections
import functools
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

MODES = ("auto", "on", "selective", "selective-half", "off")
CHECKPOINTED = ("on", "selective", "selective-half")
aten = torch.ops.aten


def _ops(*names, namespace=aten):
    """The default overloads of ``names`` that this torch has."""
    return {getattr(namespace, name).default for name in names if hasattr(namespace, name)}


@functools.cache
def saved_ops():
    """The saved ops (module docstring), looked up once, at the first policy call (``torch_attn``
    exists once torch.nn.attention.varlen is imported; the import stays out of the option parsing)."""
    ops = _ops("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
               "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    try:
        import torch.nn.attention.varlen  # noqa: F401  (defines torch.ops.torch_attn)
        ops |= _ops("_varlen_attn", namespace=torch.ops.torch_attn)
    except (ImportError, AttributeError):
        pass
    return frozenset(ops)


class _Versioned:
    """A kept output: a detached alias of the tensor and its version (a later in-place write is refused)."""

    def __init__(self, tensor):
        guard = getattr(torch._C, "_SetExcludeDispatchKeyGuard", None)
        if guard is None:
            self.tensor = tensor.detach()
        else:  # below autograd the alias would not share the version counter without ADInplaceOrView (as torch's own)
            with guard(torch._C.DispatchKey.ADInplaceOrView, False):
                self.tensor = tensor.detach()
        self.version = self.tensor._version

    def get(self, func):
        if self.tensor._version != self.version:
            raise RuntimeError(f"selective checkpointing: the output of {func} kept for the recompute was written "
                               f"to in place after the forward; its recompute would read the new values")
        return self.tensor


class KeptOutputs:
    """One checkpointed call's kept outputs, in call order, and the policy: which op calls keep theirs
    (``saved_ops()``; under ``recompute_every_second_mm`` not the call's 2nd, 4th, ... ``aten.mm``,
    numbered separately in the forward and in the recompute)."""

    def __init__(self, recompute_every_second_mm=False):
        self.outputs = collections.deque()
        self.recompute_every_second_mm = recompute_every_second_mm
        self.mm_calls = {"forward": 0, "recompute": 0}

    def keeps(self, func, phase):
        if func not in saved_ops():
            return False
        if self.recompute_every_second_mm and func is aten.mm.default:
            self.mm_calls[phase] += 1
            return self.mm_calls[phase] % 2 == 1
        return True


class _KeepInForward(TorchDispatchMode):
    def __init__(self, kept):
        super().__init__()
        self.kept = kept

    @classmethod
    def ignore_compile_internals(cls):  # torch.compile inside the region compiles (as under torch's modes)
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.kept.keeps(func, "forward"):
            self.kept.outputs.append((func, tree_map(lambda x: _Versioned(x) if isinstance(x, torch.Tensor) else x, out)))
        return out


class _ReuseInRecompute(TorchDispatchMode):
    def __init__(self, kept):
        super().__init__()
        self.kept = kept

    @classmethod
    def ignore_compile_internals(cls):
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.kept.keeps(func, "recompute"):
            return func(*args, **(kwargs or {}))
        if not self.kept.outputs:
            raise RuntimeError(f"selective checkpointing: the recompute called {func} more often than the forward "
                               f"(or a second backward through the same forward)")
        kept_func, out = self.kept.outputs.popleft()
        if kept_func is not func:
            raise RuntimeError(f"selective checkpointing: the recompute called {func} where the forward called "
                               f"{kept_func}; the checkpointed region runs other ops in its recompute")
        return tree_map(lambda x: x.get(func) if isinstance(x, _Versioned) else x, out)


def selective_context(recompute_every_second_mm=False):
    """``context_fn`` of one checkpointed call: the forward's and the recompute's modes over one
    ``KeptOutputs`` (each layer's call has its own)."""
    kept = KeptOutputs(recompute_every_second_mm)
    return _KeepInForward(kept), _ReuseInRecompute(kept)


def resolve(mode, cuda):
    """The mode ``--gradient-checkpointing mode`` runs (``auto``: ``on`` with CUDA, else ``off``)."""
    if mode not in MODES:
        raise ValueError(f"gradient checkpointing {mode!r}: expected one of {', '.join(MODES)}")
    return ("on" if cuda else "off") if mode == "auto" else mode


def checkpoint_kwargs(mode):
    """``torch.utils.checkpoint.checkpoint``'s keyword arguments for a mode of ``CHECKPOINTED``."""
    if mode not in CHECKPOINTED:
        raise ValueError(f"checkpoint_kwargs: {mode!r} checkpoints nothing")
    kwargs = {"use_reentrant": False}
    if mode != "on":
        kwargs["context_fn"] = functools.partial(selective_context, mode == "selective-half")
    return kwargs


def enable(model, mode):
    """Applies ``mode`` (``on``, ``selective``, ``selective-half`` or ``off``: resolved) to a
    transformers model: its decoder layers are checkpointed, or not (``off``)."""
    with warnings.catch_warnings():  # transformers 5 renamed these activation_checkpointing; the old names work in 4 and 5
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated")
        if mode == "off":
            if getattr(model, "is_gradient_checkpointing", False):
                model.gradient_checkpointing_disable()
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs(mode))
