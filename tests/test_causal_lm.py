"""``causal_lm_logprobs`` held to the Hugging Face model's own logits in float64: values, statistics,
sequence sums, gradients, temperature, packed rows, PEFT adapters."""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3ForCausalLM

from spot_fast.models import tiny_qwen3_config
from spot_kernels.causal_lm import causal_lm_logprobs

VOCAB = 300


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(tiny_qwen3_config(VOCAB)).double()


def batch(seed=1, rows=3, length=11):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (rows, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0  # right padding
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :4] = -100  # the prompt
    labels[2] = -100      # a row with nothing to score
    return input_ids, attention_mask, labels


def reference(model, input_ids, attention_mask, labels, temperature=1.0):
    """Per-token log-probs, entropies, argmax and mean logits from the model's materialized logits."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1] / temperature
    targets = labels[:, 1:]
    mask = targets != -100
    logprobs = logits.log_softmax(-1)
    logp = logprobs.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * mask
    entropy = -(logprobs.exp() * logprobs).sum(-1) * mask
    argmax = (logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0] >= logits.max(-1).values) & mask
    return logp, entropy, argmax, logits.mean(-1) * mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_stats_and_sums_equal_the_models_logits(model, temperature):
    input_ids, attention_mask, labels = batch()
    out = causal_lm_logprobs(model, input_ids, labels, attention_mask, temperature=temperature,
                             return_stats=True, sequence_sums=True)
    logp, entropy, argmax, mean_logit = reference(model, input_ids, attention_mask, labels, temperature)
    torch.testing.assert_close(out.logp, logp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.entropy, entropy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.mean_logit, mean_logit, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.target_is_argmax, argmax)
    assert torch.equal(out.mask, labels[:, 1:] != -100)
    torch.testing.assert_close(out.sequence_logp, logp.sum(1), rtol=1e-5, atol=1e-6)
    assert out.sequence_logp[2] == 0


def test_gradients_equal_the_models_logits(model):
    input_ids, attention_mask, labels = batch(seed=2)
    weights = torch.randn(labels.shape[0], labels.shape[1] - 1, dtype=torch.float64)

    def grads(logp):
        model.zero_grad()
        (logp.double() * weights).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    ours = grads(causal_lm_logprobs(model, input_ids, labels, attention_mask, temperature=0.8).logp)
    theirs = grads(reference(model, input_ids, attention_mask, labels, temperature=0.8)[0])
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-8, msg=name)


def test_packed_rows_equal_separate_rows(model):
    """Two sequences packed in one row (position ids restarting at 0) score as they do alone, and the
    first token of the second sequence is not predicted from the end of the first."""
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, VOCAB, (2, 9), generator=generator)
    labels = input_ids.clone()
    labels[:, :3] = -100
    labels[1, 0] = input_ids[1, 0]  # no position predicts it alone; packed, the boundary must not either
    alone = causal_lm_logprobs(model, input_ids, labels, sequence_sums=True)
    positions = torch.arange(9).repeat(2)[None]
    packed = causal_lm_logprobs(model, input_ids.reshape(1, -1), labels.reshape(1, -1), position_ids=positions,
                                sequence_sums=True)
    torch.testing.assert_close(packed.sequence_logp, alone.sequence_logp, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(packed.logp[0, :8], alone.logp[0])
    torch.testing.assert_close(packed.logp[0, 9:], alone.logp[1])
    assert not packed.mask[0, 8]  # the boundary position
    with pytest.raises(ValueError, match=r"position_ids\[0, 0\] = 1"):
        causal_lm_logprobs(model, input_ids, labels, position_ids=torch.arange(1, 10).repeat(2, 1))


def test_peft_adapters_are_used_and_a_head_adapter_is_refused(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(4)
    peft_model = get_peft_model(Qwen3ForCausalLM(tiny_qwen3_config(VOCAB)).double(),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    input_ids, attention_mask, labels = batch(seed=5)
    out = causal_lm_logprobs(peft_model, input_ids, labels, attention_mask)
    torch.testing.assert_close(out.logp, reference(peft_model, input_ids, attention_mask, labels)[0])
    with peft_model.disable_adapter():
        base = causal_lm_logprobs(peft_model, input_ids, labels, attention_mask)
        torch.testing.assert_close(base.logp, reference(peft_model, input_ids, attention_mask, labels)[0])
    assert not torch.allclose(out.logp, base.logp)
    head_adapted = get_peft_model(Qwen3ForCausalLM(tiny_qwen3_config(VOCAB)), LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(TypeError, match="PEFT adapter on the head"):
        causal_lm_logprobs(head_adapted, input_ids, labels)


def test_bad_labels_are_refused(model):
    input_ids, attention_mask, labels = batch()
    with pytest.raises(ValueError, match=r"labels must have the batch and length of input_ids: labels \(3, 10\) vs input_ids \(3, 11\)"):
        causal_lm_logprobs(model, input_ids, labels[:, 1:], attention_mask)
    labels[0, 5] = VOCAB
    with pytest.raises(ValueError, match="outside"):
        causal_lm_logprobs(model, input_ids, labels, attention_mask)


@pytest.fixture(scope="module")
def biased_model():
    """The tiny model with an LM head that has a bias, as Phi's and GPT-J's have."""
    torch.manual_seed(6)
    model = Qwen3ForCausalLM(tiny_qwen3_config(VOCAB))
    model.lm_head = nn.Linear(model.config.hidden_size, VOCAB, bias=True)
    nn.init.normal_(model.lm_head.bias, std=2.0)
    return model.double()


def random_rows(rng, packed, ignore_index, rows=3, length=12):
    """Rows of sequences drawn from ``rng``: per sequence its tokens, labels (a prompt of 0 or more
    tokens carries ``ignore_index``, and one sequence is ignored whole) and where it sits in the batch.
    Packed: each row holds 1-4 sequences of 2 or more tokens filling it. Not packed: one sequence a row,
    right-padded. Returns (input_ids, labels, attention_mask or None, position_ids or None, sequences)."""
    input_ids = torch.zeros(rows, length, dtype=torch.long)
    labels = torch.full((rows, length), ignore_index)
    position_ids = torch.zeros(rows, length, dtype=torch.long)
    attention_mask = torch.zeros(rows, length, dtype=torch.long)
    sequences = []
    for row in range(rows):
        if packed:
            cuts = sorted(rng.sample(range(2, length - 1, 2), rng.randint(0, 3)))
            spans = list(zip([0, *cuts], [*cuts, length]))
        else:
            spans = [(0, rng.randint(3, length))]
        for start, end in spans:
            tokens = torch.tensor([rng.randrange(VOCAB) for _ in range(end - start)])
            seq_labels = tokens.clone()
            seq_labels[:rng.randint(0, end - start - 1)] = ignore_index
            if not sequences:
                seq_labels[:] = ignore_index  # a sequence with nothing to score
            input_ids[row, start:end], labels[row, start:end] = tokens, seq_labels
            position_ids[row, start:end] = torch.arange(end - start)
            attention_mask[row, start:end] = 1
            sequences.append((row, start, end, tokens, seq_labels))
    return input_ids, labels, None if packed else attention_mask, position_ids if packed else None, sequences


OPTIONS = list(itertools.product([False, True], [1.0, 0.7], [False, True], [-100, -1]))


@pytest.mark.parametrize("with_bias, temperature, packed, ignore_index", OPTIONS)
def test_any_batch_equals_each_sequence_scored_alone(model, biased_model, with_bias, temperature, packed, ignore_index):
    """For every combination of head bias x temperature x packing x ignore index, on rows drawn at
    random (fixed seed): each sequence's per-token log-probs and sum equal that sequence scored alone
    from the model's own float64 logits, ``log_softmax(logits / T)`` (the bias is divided by T too)."""
    rng = random.Random(hash((with_bias, temperature, packed, ignore_index)) % 1000)
    lm = biased_model if with_bias else model
    input_ids, labels, attention_mask, position_ids, sequences = random_rows(rng, packed, ignore_index)
    out = causal_lm_logprobs(lm, input_ids, labels, attention_mask, position_ids, temperature=temperature,
                             ignore_index=ignore_index, sequence_sums=True)
    assert out.sequence_logp.shape == (len(sequences),), f"one sum per sequence: {tuple(out.sequence_logp.shape)}"
    for index, (row, start, end, tokens, seq_labels) in enumerate(sequences):
        with torch.no_grad():
            logits = lm(input_ids=tokens[None]).logits[0, :-1] / temperature
        scored = seq_labels[1:] != ignore_index
        alone = logits.log_softmax(-1).gather(-1, seq_labels[1:].clamp(min=0)[:, None])[:, 0] * scored
        what = (f"sequence {index} (row {row}, tokens {start}:{end}) with bias={with_bias}, T={temperature}, "
                f"packed={packed}, ignore_index={ignore_index}")
        torch.testing.assert_close(out.logp[row, start:end - 1], alone, rtol=1e-6, atol=1e-8,
                                   msg=lambda m: f"per-token log-probs of {what}: {m}")
        torch.testing.assert_close(out.sequence_logp[index], alone.sum(), rtol=1e-6, atol=1e-8,
                                   msg=lambda m: f"sum of {what}: {m}")


def test_autocast_leaves_the_head_in_full_precision(model):
    """Under bf16 autocast (an fp32 model, as with TRL's ``cast_lm_head_to_fp32``) the head's log-probs,
    entropies and mean logits are those of the body's hidden states through the fp32 head: within fp32
    rounding of float64, not bf16's."""
    fp32 = Qwen3ForCausalLM(tiny_qwen3_config(VOCAB))
    fp32.load_state_dict(model.state_dict())
    input_ids, attention_mask, labels = batch(seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_lm_logprobs(fp32, input_ids, labels, attention_mask, temperature=0.7, return_stats=True)
        hidden = fp32.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    logits = (hidden[:, :-1].double() @ fp32.lm_head.weight.double().T) / 0.7
    mask = labels[:, 1:] != -100
    logprobs = logits.log_softmax(-1)
    expected = {"logp": logprobs.gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0] * mask,
                "entropy": -(logprobs.exp() * logprobs).sum(-1) * mask, "mean_logit": logits.mean(-1) * mask}
    for name, want in expected.items():
        torch.testing.assert_close(getattr(out, name).double(), want, rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{name} under autocast: {m}")
