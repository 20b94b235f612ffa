r"""Where the work of a SPoT job goes: FLOPs of one optimizer step, counted, for the release's recipe
and for spot-fast, on 8B model shapes, on any machine.

    python benchmarks/bench_flops.py           # or: make flops; writes benchmarks/results/flops.{json,md}
    python benchmarks/bench_flops.py --toy     # a tiny model and few pairs, seconds (the test runs it)

**Counted.** The models are the real transformers classes (``Qwen3ForCausalLM``, ``LlamaForCausalLM``)
built from Qwen3-8B's and Llama-3.1-8B's configurations on the meta device (no weights in memory), in
train mode, SDPA attention. ``torch.utils.flop_counter.FlopCounterMode`` counts their forward, their
backward, and what activation checkpointing re-runs in the backward, per ``--gradient-checkpointing``
mode, applied by the trainer's own ``spot_fast.activation_checkpointing.enable`` (the difference of a
checkpointed and a plain forward + backward is what runs): ``on``, every layer's forward again
(non-reentrant; it stops recomputing once the last saved tensor is back, so each layer's final
projection is not recomputed); ``selective``, only the elementwise ops between the kept matmul and
attention outputs, which the counter does not count (they are memory traffic, not FLOPs: counted, its
recompute is zero); ``selective-half``, also every second matmul of a layer (k, o and up projections).
The selective modes work on the meta device as on any other. What the counter sees:

- **body matmuls**: ``aten.mm`` in the body (the linear layers);
- **attention**: ``aten.bmm``: on the meta device SDPA runs its math path (two batched matmuls
  forward, four backward) over the whole ``[L, L]`` score matrix whatever the mask holds (a meta
  tensor has no values), which is what SDPA's kernels execute on a GPU with a mask (the counter's
  convention: a kernel's recompute of the scores in its backward is not counted, here or for the
  block-sparse count). On a CPU the counter sees no SDPA at all: its CPU kernel
  (``_scaled_dot_product_flash_attention_for_cpu``) has no formula, which is why counting runs on meta;
- **LM head**: a materialized head (``lm_head`` then ``log_softmax`` and a gather) counted like the
  body; the fused head through ``spot_kernels``' ``chunked`` backend (the same algorithm as the Triton
  kernel, which cannot run on the meta device: forward tile, recomputed tile, two gradient matmuls),
  counted on the meta device and checked against its formula ``8 N H V`` (``N`` scored tokens);
  ``FlopCounterMode`` has no formula for the in-place ``addmm_`` its backward accumulates with, so one
  is supplied (without it the counter sees ``4 N H V``).

A body pass over a ``[rows, L]`` batch counts ``a * rows * L`` matmul FLOPs and ``b * rows * L^2``
attention FLOPs per pass; ``a`` and ``b`` are counted on one shape and the script asserts that they
reproduce the counter exactly on a second shape, so every micro-batch of a job is counted without
running the counter once per micro-batch.

**Formula (block-sparse and varlen attention).** FlexAttention skips a (query block, key block) pair of
128 x 128 tokens whose entries are all masked; the FLOPs counter has no notion of its block mask (it
counts a flex call as dense). ``nonempty_blocks`` counts the pairs holding a visible entry from the
batch's per-token (document, branch) ids, with the attention rule of ``spot_fast/attention.py``; each
costs what a dense 128 x 128 tile costs in the counter's convention. Varlen attention
(``spot_fast/varlen_attention.py``) attends each segment of a tree to exactly the keys it sees, so its
work is ``visible_entries``, each at a dense entry's cost. FlashAttention computes whole tiles, so
the masked part of the tiles on each segment's causal diagonal (roughly half a tile of keys per query)
is work it does that is not counted here; torch's own varlen formula, the other way, counts every
segment as a full rectangle of queries by keys, the masked half included.

**Layouts of the same pairs** (``LAYOUTS``): the release's recipe (TRL 0.20's ``DPOTrainer``: the 2B
chosen/rejected sequences padded to ``[2B, L]``, logits materialized at every position, prompt and
padding included, full recompute, reference log-probs by one forward of every pair before training,
in the ``trl020`` token layout); spot-fast with SDPA (pair trees packed in one row, the fused head on
completion tokens only, SDPA with the dense tree mask, full recompute, reference scored once the same
way: the CPU's default); spot-fast with FlexAttention (the same, attention counted by blocks);
spot-fast with varlen attention (attention counted by visible entries) under each checkpointing mode:
``on`` is a GPU's default (``--attention auto`` picks varlen where its self-check passes,
``--gradient-checkpointing auto`` is ``on``), ``selective`` is the configuration the project's targets
are set for (``TARGET``: at most 0.6x the recipe's job FLOPs with 1 pair per micro-batch, 0.4x with 4).

**Pairs** (``DISTRIBUTIONS``): the bundled pairs (the bundled tokenizer); the controlled experiment's
rectified pairs (regenerated: ``benchmarks/results/spot_claims.json`` stores counts, not pairs, so the
start model's errors are drawn from the slip model it was pre-trained on, corrected by the same
minimal-edit Oracle and kept at the same gamma; character tokenizer); and SPoT-like synthetic pairs
(``SpotLike``: lengths of Qwen3-8B answers on competition math, first edit anywhere in the answer; a
sample of ``--synthetic-pairs``, 1000 by default: FLOPs per pair are summed over their micro-batches
and scale linearly to the job's pairs; token lengths are drawn once, so both layouts get the same
lengths, without the few template tokens by which ``trl020`` differs).

**Projected.** The paper's job (about 4k pairs, 2 epochs, global batch 32 on 8 GPUs: 1 pair per
micro-batch, as ``README.md``'s 8-GPU command) in FLOPs, and its time on 8 H800s at an assumed share
of the bf16 dense peak (``--utilisation``), beside the paper's 28 (v1) and 16 (v2) minutes. The
projection is arithmetic on counted FLOPs, not a measurement.
"""
import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from common import RESULTS_DIR, device_name, write_report
from spot_fast import activation_checkpointing
from spot_fast.batching import TRUNK, collate
from spot_fast.data import Pair, TokenLayout, load_pairs
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_tokenizer
from spot_kernels import linear_logprobs_unchecked

BLOCK = 128                      # FlexAttention's default block size (queries and keys)
H800_BF16_DENSE = 989.5e12       # FLOP/s, one H800 SXM (the H100 SXM's tensor-core peak)
PAPER_MINUTES = {"v1": 28, "v2": 16}
aten = torch.ops.aten


def model_configs(toy):
    """{name: config}: the 8B shapes (Qwen3-8B's and Llama-3.1-8B's published configurations), or a
    tiny Qwen3 for the test."""
    if toy:
        return {"toy-qwen3": Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                          tie_word_embeddings=False)}
    return {
        "Qwen3-8B": Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                                rope_theta=1000000.0, tie_word_embeddings=False),
        "Llama-3.1-8B": LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                    max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False,
                                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    }


# ---- counting ------------------------------------------------------------------------------------

def _addmm_inplace_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs):
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def counter():
    """``FlopCounterMode`` that also counts the in-place ``addmm_`` (the fused head's backward uses it)."""
    return FlopCounterMode(display=False, custom_mapping={aten.addmm_: _addmm_inplace_flop})


def counted(mode):
    """{op name: FLOPs} of a finished ``counter()``."""
    return {str(op).removeprefix("aten."): n for op, n in mode.get_flop_counts().get("Global", {}).items()}


def meta_model(config):
    """``config``'s causal LM on the meta device, SDPA attention, train mode, every weight trainable."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.train()


RECOMPUTE_MODES = ("on", "selective", "selective-half")  # --gradient-checkpointing modes that recompute


def recompute_pass(mode):
    """The pass name of ``mode``'s recompute in ``count_body``'s result and ``Rates``."""
    return f"recompute {mode}"


def count_body(model, rows, length):
    """Counted FLOPs of the body on a ``[rows, length]`` batch with a dense ``[L, L]`` mask:
    {pass: {"matmul": aten.mm, "attention": aten.bmm}} for the forward, the backward and, per mode of
    ``RECOMPUTE_MODES`` (``recompute_pass(mode)``), the recompute of activation checkpointing in that
    mode (``spot_fast.activation_checkpointing.enable``: checkpointed forward + backward minus the plain
    ones)."""
    ids = torch.zeros(rows, length, dtype=torch.long, device="meta")
    positions = torch.arange(length, device="meta").expand(rows, length)
    mask = torch.ones(rows, 1, length, length, dtype=torch.bool, device="meta")
    body = model.model

    def run():
        return body(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False).last_hidden_state

    def split(counts):
        unknown = set(counts) - {"mm", "bmm"}
        if unknown:
            raise RuntimeError(f"the body ran ops this script does not classify: {sorted(unknown)}")
        return {"matmul": counts.get("mm", 0), "attention": counts.get("bmm", 0)}

    activation_checkpointing.enable(model, "off")
    with counter() as mode:
        hidden = run()
    forward = split(counted(mode))
    with counter() as mode:
        hidden.backward(torch.ones_like(hidden))
    backward = split(counted(mode))
    passes = {"forward": forward, "backward": backward}
    for checkpointing in RECOMPUTE_MODES:
        activation_checkpointing.enable(model, checkpointing)
        with counter() as mode:
            hidden = run()
            hidden.backward(torch.ones_like(hidden))
        activation_checkpointing.enable(model, "off")
        checkpointed = split(counted(mode))
        passes[recompute_pass(checkpointing)] = {k: checkpointed[k] - forward[k] - backward[k] for k in forward}
    return passes


def count_head(model, tokens, fused):
    """Counted FLOPs of the LM head on ``tokens`` hidden states: {"forward", "backward"}. ``fused``:
    ``spot_kernels``' chunked backend (no logits tensor); otherwise logits, ``log_softmax``, gather."""
    weight = model.get_output_embeddings().weight
    hidden = torch.zeros(tokens, weight.shape[1], device="meta", requires_grad=True)
    targets = torch.zeros(tokens, dtype=torch.long, device="meta")
    with counter() as mode:
        if fused:
            logp = linear_logprobs_unchecked(hidden, weight, targets, backend="chunked")
        else:
            logits = torch.nn.functional.linear(hidden, weight)
            logp = logits.float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    forward = sum(counted(mode).values())
    with counter() as mode:
        logp.sum().backward()
    return {"forward": forward, "backward": sum(counted(mode).values())}


@dataclass(frozen=True)
class Rates:
    """Counted FLOPs per unit of shape: body matmuls per token and attention per score entry (row x
    L^2), for each pass of ``count_body`` (forward, backward, the recompute of each checkpointing
    mode); heads per token, forward and backward."""
    matmul: dict
    attention: dict
    materialized_head: dict
    fused_head: dict


def exact_quotient(numerator, denominator, what):
    if numerator % denominator:
        raise RuntimeError(f"{what}: {numerator} FLOPs is not a multiple of {denominator}: not linear in the shape")
    return numerator // denominator


def calibrate(model, base_length):
    """``Rates`` counted on a ``[1, base_length]`` batch (and ``base_length`` head tokens), then checked
    against the counter on ``[2, 3 * base_length // 2]`` (and as many head tokens): the extrapolation
    must reproduce the count exactly."""
    one = count_body(model, 1, base_length)
    matmul = {p: exact_quotient(one[p]["matmul"], base_length, f"{p} matmuls") for p in one}
    attention = {p: exact_quotient(one[p]["attention"], base_length ** 2, f"{p} attention") for p in one}
    heads = {name: count_head(model, base_length, fused) for name, fused in (("materialized", False), ("fused", True))}
    head_rates = {name: {p: exact_quotient(n, base_length, f"{name} head {p}") for p, n in h.items()}
                  for name, h in heads.items()}
    rows, length = 2, 3 * base_length // 2
    check = count_body(model, rows, length)
    for p in check:
        expected = {"matmul": matmul[p] * rows * length, "attention": attention[p] * rows * length ** 2}
        if check[p] != expected:
            raise RuntimeError(f"{p}: counted {check[p]} on [{rows}, {length}], the rates give {expected}")
    for name, fused in (("materialized", False), ("fused", True)):
        counted_head = count_head(model, rows * length, fused)
        if counted_head != {p: r * rows * length for p, r in head_rates[name].items()}:
            raise RuntimeError(f"{name} head: counted {counted_head} on {rows * length} tokens, not linear")
    return Rates(matmul, attention, head_rates["materialized"], head_rates["fused"])


def fused_head_formula(tokens, config):
    """``8 N H V``: forward tile, recomputed tile, and the two gradient matmuls (docs/design.md section 8)."""
    return 8 * tokens * config.hidden_size * config.vocab_size


def attention_formula(rows, length, config):
    """Dense attention, forward + backward, every layer: 3 x (QK^T + PV) = 12 rows L^2 heads head_dim."""
    return 12 * rows * length ** 2 * config.num_attention_heads * config.head_dim * config.num_hidden_layers


def linear_parameters(config):
    """Weights of the body's linear layers (q, k, v, o, gate, up, down) of all layers."""
    h, heads, kv, d, m = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                          config.head_dim, config.intermediate_size)
    return config.num_hidden_layers * (h * heads * d * 2 + h * kv * d * 2 + 3 * h * m)


def last_projection_parameters(config):
    """Weights of each layer's last matmul (the MLP's down projection) of all layers: checkpointing's
    recompute stops before it (its output is saved by nothing its backward needs)."""
    return config.num_hidden_layers * config.hidden_size * config.intermediate_size


def every_second_projection_parameters(config):
    """Weights of each layer's 2nd, 4th and 6th matmul (k, o and up projections; the layer runs q, k,
    v, o, gate, up, down) of all layers: what ``selective-half`` recomputes."""
    h, heads, kv, d, m = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                          config.head_dim, config.intermediate_size)
    return config.num_hidden_layers * (h * kv * d + heads * d * h + h * m)


# ---- block-sparse attention ----------------------------------------------------------------------

def nonempty_blocks(doc_ids, branch_ids, block=BLOCK):
    """Per row, the number of (query block, key block) pairs holding at least one visible entry under
    ``spot_fast/attention.py``'s rule (same document >= 0, key not after query, key on the trunk or on
    the query's branch; every token sees itself).

    Per key block and (document, branch), the first key position ``first``; per query block and
    (document, branch), the last query position ``last``. A query of branch b in document d sees key
    block kb when the first key of d in kb on the trunk or on b is not after it, so the query block
    sees kb when that holds for the last of its queries of some (d, b). Padding (document -1) sees
    only itself: its own block. O(L + blocks^2 x documents) per row."""
    counts = []
    for doc, branch in zip(doc_ids, branch_ids):
        length = doc.shape[0]
        blocks = -(-length // block)
        _, local_doc = torch.unique(doc, return_inverse=True)  # documents numbered 0.. in this row (-1 too)
        num_docs = int(local_doc.max()) + 1
        position = torch.arange(length)
        real = doc >= 0
        slot = ((position // block * num_docs + local_doc) * 3 + branch)[real]
        first = torch.full((blocks * num_docs * 3,), length).scatter_reduce(0, slot, position[real], reduce="amin")
        last = torch.full((blocks * num_docs * 3,), -1).scatter_reduce(0, slot, position[real], reduce="amax")
        first, last = first.reshape(blocks, num_docs, 3), last.reshape(blocks, num_docs, 3)
        reach = torch.minimum(first[:, :, TRUNK:TRUNK + 1], first)  # [key block, d, b]: first key a query of (d, b) may see
        sees = ((reach[None] <= last[:, None]) & (last[:, None] >= 0)).flatten(2).any(dim=2)  # [query block, key block]
        padding_blocks = torch.unique(position[~real] // block)
        sees[padding_blocks, padding_blocks] = True
        counts.append(int(sees.sum()))
    return counts


def visible_entries(doc_ids, branch_ids):
    """Per row, the number of (query, key) entries the attention rule leaves visible: the work an
    attention kernel that skipped every masked entry would do. A query sees the keys up to itself of
    its document on the trunk and on its own branch (padding: itself): running counts per (document,
    branch)."""
    counts = []
    for doc, branch in zip(doc_ids, branch_ids):
        _, local_doc = torch.unique(doc, return_inverse=True)
        slot = local_doc * 3 + branch
        running = torch.nn.functional.one_hot(slot, int(slot.max()) + 1).cumsum(dim=0)  # [L, slots]
        position = torch.arange(doc.shape[0])
        own = running[position, slot]
        trunk = running[position, local_doc * 3 + TRUNK]
        sees = torch.where(branch == TRUNK, own, own + trunk)
        counts.append(int(torch.where(doc >= 0, sees, torch.ones_like(sees)).sum()))
    return counts


# ---- pairs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpotLike:
    """SPoT-like pairs. Prompts: log-normal, median 150 tokens (a competition-math problem, the
    instruction and the chat template). Rejected answers: log-normal, median 2000 tokens (Qwen3-8B's
    non-thinking answers to hard problems, long when wrong), within the recipe's 8192 tokens. The first
    edit: uniform over the rejected answer, so the common prefix is a uniform fraction of it (mean
    0.5): the Oracle keeps the reasoning up to its first wrong step, which in a failed solution is
    not concentrated at either end (in the controlled experiment's rectified pairs the first edit is
    the slipped column, uniform over the columns; their prefix statistics are in the output). The
    chosen answer rewrites the rest: a suffix 0.8-1.2 times the rejected suffix's length."""
    prompt_median: int = 150
    prompt_sigma: float = 0.5
    answer_median: int = 2000
    answer_sigma: float = 0.6
    suffix_ratio: tuple = (0.8, 1.2)
    max_length: int = 8192
    seed: int = 0

    def pairs(self, count):
        rng = random.Random(self.seed)
        out = []
        for line in range(count):
            prompt = min(self.max_length // 8, max(8, round(rng.lognormvariate(math.log(self.prompt_median), self.prompt_sigma))))
            room = self.max_length - prompt
            rejected = min(room, max(16, round(rng.lognormvariate(math.log(self.answer_median), self.answer_sigma))))
            shared = math.floor(rng.random() * rejected)
            chosen_suffix = min(room - shared, max(1, round((rejected - shared) * rng.uniform(*self.suffix_ratio))))
            out.append(Pair([5] * prompt, [1] * shared + [2] * chosen_suffix, [1] * shared + [3] * (rejected - shared), line))
        return out


def bundled_pairs(max_length):
    """{render: pairs} of ``spot_fast/assets/pairs.jsonl`` with the bundled tokenizer."""
    tokenizer = load_tokenizer(BUILTIN_MODEL)
    path = ASSETS / "pairs.jsonl"
    return {render: load_pairs(path, tokenizer, max_length, layout=TokenLayout(render))[0] for render in ("spot-fast", "trl020")}


def claims_pairs(max_length, limit=None):
    """{render: pairs} of the controlled experiment's task, regenerated (module docstring): the
    elicitation problems of its full scale, one slipped answer each, the minimal-edit Oracle's
    correction, kept when the change ratio is at most the experiment's gamma."""
    import claims_task as task
    import spot_claims

    from spot_fast.rectify.lcs import change_ratio

    scale, tokenizer = spot_claims.FULL, task.char_tokenizer()
    rng = random.Random(scale.data_seed)
    problems = spot_claims.distinct_draws(rng, task.random_addends, scale.elicit_problems + scale.eval_problems)
    problems = problems[:scale.elicit_problems][:limit]
    records = []
    for a, b in problems:
        question = task.addition_question(a, b)
        wrong = task.slipped_solution(a, b, rng.randrange(len(task.OPENINGS)), rng)
        right = task.minimal_edit(question, wrong, str(a + b))
        ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        if change_ratio(ids(wrong), ids(right)) <= scale.gamma:
            records.append({"prompt": spot_claims.prompt(question), "chosen": right, "rejected": wrong})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return {render: load_pairs(path, tokenizer, max_length, layout=TokenLayout(render))[0]
                for render in ("spot-fast", "trl020")}


def prefix_statistics(pairs):
    from spot_fast.batching import common_prefix_length

    fractions = [common_prefix_length(p.chosen_ids, p.rejected_ids) / len(p.chosen_ids) for p in pairs]
    return {"pairs": len(pairs), "mean_prompt_tokens": sum(len(p.prompt_ids) for p in pairs) / len(pairs),
            "mean_answer_tokens": sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs) / (2 * len(pairs)),
            "mean_common_prefix_fraction": sum(fractions) / len(fractions)}


# ---- one job -------------------------------------------------------------------------------------

ENTRIES = {  # attention kind: the Shape field holding the score entries it computes
    "dense": "dense_entries",      # SDPA: every entry of the [L, L] score matrix, masked or not
    "blocks": "block_entries",     # FlexAttention: the 128 x 128 blocks holding a visible entry
    "visible": "visible_entries",  # varlen: exactly the visible entries of each segment
}
LAYOUTS = {  # name: (render, pack, share prefix, fused head, attention, --gradient-checkpointing mode)
    "recipe (TRL 0.20)": ("trl020", False, False, False, "dense", "on"),
    "spot-fast (SDPA)": ("spot-fast", True, True, True, "dense", "on"),
    "spot-fast (flex)": ("spot-fast", True, True, True, "blocks", "on"),
    "spot-fast (varlen)": ("spot-fast", True, True, True, "visible", "on"),
    "spot-fast (varlen, selective)": ("spot-fast", True, True, True, "visible", "selective"),
    "spot-fast (varlen, selective-half)": ("spot-fast", True, True, True, "visible", "selective-half"),
    "spot-fast (varlen, no recompute)": ("spot-fast", True, True, True, "visible", "off"),
}
GPU_DEFAULT = "spot-fast (varlen)"  # --attention auto and --gradient-checkpointing auto on a GPU (README)
TARGET = ("spot-fast (varlen, selective)", {1: 0.6, 4: 0.4})  # at most these times the recipe's job FLOPs, by pairs per micro-batch
PARTS = ("body matmuls", "attention", "LM head", "recompute")


@dataclass(frozen=True)
class Shape:
    """What the FLOPs of one micro-batch depend on: ``rows x length`` token slots (padding included),
    real and scored tokens, score entries executed by SDPA (``rows x length^2``) and by FlexAttention
    (visible blocks x ``BLOCK^2``), entries the mask leaves visible, and the dense mask's elements."""
    slots: int
    real: int
    scored: int
    dense_entries: int
    block_entries: int
    visible_entries: int
    mask_elements: int


def micro_batch_shapes(pairs, pack, share, pairs_per_micro_batch):
    """The ``Shape`` of every micro-batch of ``pairs``, in order, as ``spot_fast.batching.collate`` lays them out."""
    shapes = []
    for start in range(0, len(pairs), pairs_per_micro_batch):
        batch = collate(pairs[start:start + pairs_per_micro_batch], pack=pack, pad_id=0, share_prefix=share)
        rows, length = batch.input_ids.shape
        shapes.append(Shape(
            slots=rows * length, real=batch.num_tokens, scored=batch.targets.numel(), dense_entries=rows * length ** 2,
            block_entries=sum(nonempty_blocks(batch.doc_ids, batch.branch_ids)) * BLOCK ** 2,
            visible_entries=sum(visible_entries(batch.doc_ids, batch.branch_ids)),
            mask_elements=rows * length ** 2 if batch.shares_prefix else 0))
    return shapes


def layer_rates(rates, checkpointing):
    """({pass: body matmul FLOPs per token}, {pass: attention FLOPs per score entry}) for the forward,
    the backward and the recompute under ``checkpointing`` (a --gradient-checkpointing mode; off: none)."""
    def passes(table):
        recompute = 0 if checkpointing == "off" else table[recompute_pass(checkpointing)]
        return {"forward": table["forward"], "backward": table["backward"], "recompute": recompute}
    return passes(rates.matmul), passes(rates.attention)


def micro_batch_flops(shape, rates, fused, attention_kind, checkpointing):
    """FLOPs of one micro-batch: ({part: training FLOPs}, the reference forward, {the work it does
    that the job does not need})."""
    entries = getattr(shape, ENTRIES[attention_kind])
    matmul_rates, attention_rates = layer_rates(rates, checkpointing)
    attention = {p: rate * entries for p, rate in attention_rates.items()}
    head_tokens, head = (shape.scored, rates.fused_head) if fused else (shape.slots, rates.materialized_head)
    parts = {
        "body matmuls": (matmul_rates["forward"] + matmul_rates["backward"]) * shape.slots,
        "attention": attention["forward"] + attention["backward"],
        "LM head": (head["forward"] + head["backward"]) * head_tokens,
        "recompute": matmul_rates["recompute"] * shape.slots + attention["recompute"],
    }
    reference = matmul_rates["forward"] * shape.slots + attention["forward"] + head["forward"] * head_tokens
    padding = shape.slots - shape.real
    waste = {
        "padding": (sum(matmul_rates.values()) + (0 if fused else sum(head.values()))) * padding,
        "head on unscored positions": 0 if fused else sum(head.values()) * (shape.real - shape.scored),  # prompts
        "attention on masked entries": sum(attention_rates.values()) * (entries - shape.visible_entries),
        "mask build (elements)": shape.mask_elements if attention_kind == "dense" else 0,
    }
    return parts, reference, waste


def job_flops(shapes, rates, layout, job_pairs, epochs, pairs_per_micro_batch):
    """Mean FLOPs per pair over the micro-batches ``shapes``, and the job's: ``epochs`` passes over
    ``job_pairs`` pairs plus the reference forward of each (once), FLOPs per pair scaled linearly."""
    _, _, _, fused, attention_kind, checkpointing = LAYOUTS[layout]
    parts, waste, reference = dict.fromkeys(PARTS, 0), {}, 0
    for shape in shapes:
        step_parts, step_reference, step_waste = micro_batch_flops(shape, rates, fused, attention_kind, checkpointing)
        for store, new in ((parts, step_parts), (waste, step_waste)):
            for key, value in new.items():
                store[key] = store.get(key, 0) + value
        reference += step_reference
    pairs = len(shapes) * pairs_per_micro_batch  # the last micro-batch may hold fewer: negligible, and exact at 1
    per_pair = {k: v / pairs for k, v in parts.items()}
    training = sum(per_pair.values()) * job_pairs * epochs
    reference_job = reference / pairs * job_pairs
    tokens = {k: sum(getattr(s, k) for s in shapes) / pairs for k in ("slots", "real", "scored")}
    return {"per_pair": per_pair, "per_pair_total": sum(per_pair.values()),
            "tokens_per_pair": {"forwarded": tokens["slots"], "real": tokens["real"], "scored": tokens["scored"]},
            "waste_per_pair": {k: v / pairs for k, v in waste.items()},
            "reference_per_pair": reference / pairs,
            "job_training": training, "job_reference": reference_job, "job_total": training + reference_job}


# ---- cross-check and report ----------------------------------------------------------------------

def cross_check(config):
    """The counter against the formulas on one small shape of ``config``'s model: body matmuls 6 x
    tokens x linear weights, attention 12 rows L^2 heads head_dim layers (forward + backward), the
    recompute of full checkpointing (``on``) 2 x tokens x the linear weights but the last projection of
    each layer plus the attention's forward, of ``selective`` nothing, of ``selective-half`` 2 x tokens
    x the k, o and up projections' weights, the materialized head 6 N H V, the fused head (chunked
    backend) 8 N H V."""
    model = meta_model(config)
    rows, length = 2, 96
    body = count_body(model, rows, length)
    tokens = rows * length
    materialized, fused = count_head(model, tokens, False), count_head(model, tokens, True)
    hv = config.hidden_size * config.vocab_size
    return {
        "shape": [rows, length],
        "body matmuls": {"counted": body["forward"]["matmul"] + body["backward"]["matmul"],
                         "formula": 6 * tokens * linear_parameters(config)},
        "attention": {"counted": body["forward"]["attention"] + body["backward"]["attention"],
                      "formula": attention_formula(rows, length, config)},
        "recompute": {"counted": sum(body[recompute_pass("on")].values()),
                      "formula": 2 * tokens * (linear_parameters(config) - last_projection_parameters(config))
                      + attention_formula(rows, length, config) // 3},
        "recompute (selective)": {"counted": sum(body[recompute_pass("selective")].values()), "formula": 0},
        "recompute (selective-half)": {"counted": sum(body[recompute_pass("selective-half")].values()),
                                       "formula": 2 * tokens * every_second_projection_parameters(config)},
        "materialized head": {"counted": sum(materialized.values()), "formula": 6 * tokens * hv},
        "fused head": {"counted": sum(fused.values()), "formula": fused_head_formula(tokens, config)},
    }


def run(args):
    started = time.time()
    spot_like = SpotLike(prompt_median=20, answer_median=150, max_length=args.max_length) if args.toy \
        else SpotLike(max_length=args.max_length)
    distributions = {
        "bundled pairs": bundled_pairs(args.max_length),
        "controlled experiment (rectified)": claims_pairs(args.max_length, limit=args.claims_problems),
        "SPoT-like synthetic": dict.fromkeys(("spot-fast", "trl020"), spot_like.pairs(args.synthetic_pairs)),
    }
    report = {"device": {"name": device_name(torch.device("cpu")), "type": "cpu", "counted_on_meta": True},
              "torch": torch.__version__, "block": BLOCK, "pairs_per_micro_batch": args.pairs_per_micro_batch,
              "job": {"pairs": args.job_pairs, "epochs": args.epochs, "global_batch": args.global_batch, "gpus": 8,
                      "optimizer_steps": args.epochs * math.ceil(args.job_pairs / args.global_batch)},
              "utilisation": args.utilisation, "peak_flops_per_gpu": H800_BF16_DENSE, "paper_minutes": PAPER_MINUTES,
              "spot_like": asdict(spot_like),
              "distributions": {name: prefix_statistics(p["spot-fast"]) for name, p in distributions.items()},
              "models": {}}
    shapes = {}  # (distribution, render, pack, share) -> micro-batch shapes: the same for every model
    for name, pairs in distributions.items():
        print(f"laying out {name}", file=sys.stderr, flush=True)
        for render, pack, share, *_ in LAYOUTS.values():
            if (name, render, pack, share) not in shapes:
                shapes[name, render, pack, share] = micro_batch_shapes(pairs[render], pack, share, args.pairs_per_micro_batch)
    for model_name, config in model_configs(args.toy).items():
        print(f"{model_name}: counting on the meta device", file=sys.stderr, flush=True)
        rates = calibrate(meta_model(config), args.calibration_length)
        entry = {"cross_check": cross_check(config), "rates": asdict(rates), "jobs": {}}
        for name in distributions:
            entry["jobs"][name] = {layout: job_flops(shapes[(name, *LAYOUTS[layout][:3])], rates, layout, args.job_pairs,
                                                     args.epochs, args.pairs_per_micro_batch) for layout in LAYOUTS}
        report["models"][model_name] = entry
    report["seconds"] = time.time() - started
    return report


def minutes(flops, report):
    """Projected minutes of ``flops`` on the job's GPUs at the report's utilisation."""
    return flops / (report["job"]["gpus"] * report["peak_flops_per_gpu"] * report["utilisation"]) / 60


def implied_utilisation(flops, report, minutes_taken):
    """The share of the GPUs' peak at which ``flops`` take ``minutes_taken``."""
    return flops / (report["job"]["gpus"] * report["peak_flops_per_gpu"] * minutes_taken * 60)


def amount(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def markdown(report):
    steps = report["job"]["optimizer_steps"]
    lines = ["# FLOPs of a SPoT job: the release's recipe against spot-fast", "",
             f"Counted with `FlopCounterMode` on the meta device (torch {report['torch']}): the model bodies, SDPA "
             f"(its math path there: every score entry, masked or not), the materialized head, and the fused head "
             f"through `spot_kernels`' chunked backend (the Triton kernel cannot run on the meta device; checked "
             f"against 8 N H V). By formula: block-sparse attention, {report['block']}x{report['block']} blocks "
             f"holding a visible entry (the counter cannot see a block mask), and varlen attention, exactly the "
             f"visible entries; both at a dense entry's counted cost. Recompute: counted per "
             f"--gradient-checkpointing mode (on: every layer's forward again; selective: matmul and attention "
             f"outputs kept; selective-half: every second matmul recomputed; no recompute: off). "
             f"{report['pairs_per_micro_batch']} pair(s) per micro-batch. Job: {report['job']['pairs']} pairs x "
             f"{report['job']['epochs']} epochs = {steps} optimizer steps of {report['job']['global_batch']} pairs, "
             f"plus one reference forward of every pair. Projected minutes: job FLOPs / (8 H800 x "
             f"{report['peak_flops_per_gpu'] / 1e12:.1f} TFLOP/s x {report['utilisation']:.0%} utilisation), a "
             f"projection, not a measurement; the paper: {PAPER_MINUTES['v1']} min (v1), {PAPER_MINUTES['v2']} min (v2).", ""]
    lines += [f"| model | pairs | layout | TFLOP/step ({report['job']['global_batch']} pairs) | body | attention | LM head | "
              "recompute | reference (job) | job PFLOP | vs recipe | projected min |", "|---" * 12 + "|"]
    for model_name, entry in report["models"].items():
        for dist, jobs in entry["jobs"].items():
            recipe = jobs["recipe (TRL 0.20)"]["job_total"]
            for layout, job in jobs.items():
                per_step = job["job_training"] / steps
                share = {k: v / job["per_pair_total"] for k, v in job["per_pair"].items()}
                lines.append(
                    f"| {model_name} | {dist} | {layout} | {amount(per_step / 1e12)} | "
                    + " | ".join(f"{share[p]:.0%}" for p in PARTS)
                    + f" | {job['job_reference'] / job['job_total']:.0%} | {amount(job['job_total'] / 1e15)} | "
                    f"{job['job_total'] / recipe:.2f} | {minutes(job['job_total'], report):.3g} |")
    lines += ["", "Shares: of a training step (body, attention, LM head, recompute), and of the whole job (reference).", ""]
    target_layout, targets = TARGET
    target = targets.get(report["pairs_per_micro_batch"])
    for model_name, entry in report["models"].items():
        jobs = entry["jobs"]["SPoT-like synthetic"]
        recipe = jobs["recipe (TRL 0.20)"]["job_total"]
        ratio = jobs[target_layout]["job_total"] / recipe
        verdict = "" if target is None else f" (target: at most {target}: {'met' if ratio <= target else 'not met'})"
        lines.append(f"- {model_name}, SPoT-like pairs: {target_layout} does {ratio:.3f}x the recipe's job FLOPs"
                     f"{verdict}; a GPU's default ({GPU_DEFAULT}: --attention auto, --gradient-checkpointing auto) "
                     f"{jobs[GPU_DEFAULT]['job_total'] / recipe:.3f}x.")
    for model_name, entry in report["models"].items():
        recipe = entry["jobs"]["SPoT-like synthetic"]["recipe (TRL 0.20)"]["job_total"]
        implied = ", ".join(f"{implied_utilisation(recipe, report, m):.0%} for {m} min ({v})" for v, m in PAPER_MINUTES.items())
        lines.append(f"- {model_name}, SPoT-like pairs: the recipe's counted FLOPs take the paper's times at a "
                     f"utilisation of {implied} of the bf16 dense peak.")
    lines += ["",
              "", "## Pairs", "", "| pairs | count | prompt tokens | answer tokens | common prefix / y+ |",
              "|---|---|---|---|---|"]
    for name, s in report["distributions"].items():
        lines.append(f"| {name} | {s['pairs']} | {s['mean_prompt_tokens']:.0f} | {s['mean_answer_tokens']:.0f} | "
                     f"{s['mean_common_prefix_fraction']:.2f} |")
    lines += ["", "## Work the job does not need", "",
              "Shares of a training step, except the reference pass (of the job). Padding: the body, its recompute "
              "and a materialized head on padding tokens. Unscored head: logits of prompt positions. Masked attention: "
              "score entries computed (forward, backward, recompute) that the mask hides, padding included. Mask "
              "build: the dense [L, L] mask's elements per pair (integer compares, not FLOPs).", "",
              "| model | pairs | layout | recompute | reference (job) | padding | unscored head | masked attention | "
              "mask elements / pair |", "|---" * 9 + "|"]
    for model_name, entry in report["models"].items():
        for dist, jobs in entry["jobs"].items():
            for layout, job in jobs.items():
                waste, total = job["waste_per_pair"], job["per_pair_total"]
                lines.append(f"| {model_name} | {dist} | {layout} | {job['per_pair']['recompute'] / total:.1%} | "
                             f"{job['job_reference'] / job['job_total']:.1%} | {waste['padding'] / total:.1%} | "
                             f"{waste['head on unscored positions'] / total:.1%} | "
                             f"{waste['attention on masked entries'] / total:.1%} | {waste['mask build (elements)']:.3g} |")
    lines += ["", "## Counter against formula (small shape)", "", "| model | part | counted | formula |", "|---|---|---|---|"]
    for model_name, entry in report["models"].items():
        for part, c in entry["cross_check"].items():
            if part != "shape":
                lines.append(f"| {model_name} | {part} | {c['counted']} | {c['formula']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="a tiny model, few pairs: seconds")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default benchmarks/results/flops; --toy: none)")
    parser.add_argument("--utilisation", type=float, default=0.5, help="assumed share of the bf16 dense peak (projection)")
    parser.add_argument("--pairs-per-micro-batch", type=int, default=1)
    parser.add_argument("--job-pairs", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--synthetic-pairs", type=int, default=None,
                        help="SPoT-like pairs drawn, a sample of the job's pairs (default 1000; toy 8)")
    parser.add_argument("--claims-problems", type=int, default=None, help="elicitation problems regenerated (default all)")
    parser.add_argument("--calibration-length", type=int, default=None)
    args = parser.parse_args(argv)
    if args.toy:
        args.synthetic_pairs = args.synthetic_pairs or 8
        args.claims_problems = args.claims_problems or 16
        args.max_length = min(args.max_length, 1024)
    args.synthetic_pairs = args.synthetic_pairs or 1000
    args.calibration_length = args.calibration_length or (32 if args.toy else 256)
    return args


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    table = markdown(report)
    print(table)
    out = args.out or (None if args.toy else RESULTS_DIR / "flops")
    if out is not None:
        write_report(report, table, out)
    return report


if __name__ == "__main__":
    main()
