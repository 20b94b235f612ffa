"""Sampling answers from the student model: Hugging Face ``generate``, or vLLM when installed.

A generator maps a list of questions, each with the id of its sample, to one sampled answer each
(``Generation``: text, the number of new tokens, end token included, and whether it stopped at the
token limit rather than at an end token); several samples of one question are that question repeated
under other ids. Both backends render the
question the same way: as the user turn of the tokenizer's chat template with the generation prompt,
Qwen3 non-thinking mode by default (the template inserts an empty ``<think>`` block), or as the raw
question with ``chat_template=False``.

Sampling settings (``settings.Sampling``) default to Qwen3's non-thinking recommendation: temperature 0.7,
top-p 0.8; top-k 0 means no top-k cut (both backends are told so explicitly, since Hugging Face
would otherwise apply its default of 50).

Seeding. Invariant: the random draws of a sample depend only on the sampling seed and the sample's id
(which names its problem and repetition): ``sample_seed`` seeds a random stream of its own for every
sample. So a sample is the same whatever was sampled before it or beside it in a batch: a run resumed
after an interruption, with another ``--batch-size``, or with more ``--samples`` draws for every
(problem, repetition) the sample the uninterrupted run draws. Hugging Face ``generate`` has one global
generator, so ``HFGenerator`` decodes greedily over scores to which ``RowNoise`` added Gumbel noise from
each row's own generator (the Gumbel-max trick: an exact draw from the filtered softmax); vLLM is given
each sample's seed in its own ``SamplingParams``. The one thing batching still changes is floating-point
rounding: padding changes the shapes of the matmuls (on the CPU in float32 a logit moves by about 1e-7,
which flips a draw only on a near-tie of two tokens); ``--batch-size 1`` removes even that.

``sample_missing`` is the resumable sampling loop of every command that samples (``elicit``,
``spot-fast-eval``); ``generator_loader`` builds their generator from the options of
``settings.add_sampling_arguments``.
"""
import hashlib
from dataclasses import dataclass
from functools import partial

import torch
from tqdm import tqdm

from spot_fast.models import BUILTIN_MODEL, load_model, load_tokenizer
from spot_fast.sampling.settings import sampling_settings


def sample_seed(seed, sample_id):
    """The seed of the sample ``sample_id`` under sampling seed ``seed``: 63 bits of SHA-256, the same in
    every process (Python's ``hash`` of a string changes from one process to the next)."""
    digest = hashlib.sha256(f"{seed}\0{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int
    truncated: bool


class PromptRenderer:
    """Question -> prompt text, through the chat template unless ``chat_template`` is False."""

    def __init__(self, tokenizer, chat_template=True, enable_thinking=False):
        if chat_template and not tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template; use --no-chat-template for raw prompts")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.enable_thinking = enable_thinking

    def __call__(self, question):
        if not self.chat_template:
            return question
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True,
            enable_thinking=self.enable_thinking)


class RowNoise:
    """A logits processor that adds to each row's scores Gumbel noise drawn from that row's own
    generator, seeded with ``seeds[row]``: the argmax of the result is a draw from the softmax of the
    scores, and row ``i``'s ``t``-th draw depends on ``seeds[i]`` and ``t`` alone. Tokens already cut
    (-inf) stay cut."""

    def __init__(self, seeds, device):
        self.generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids, scores):
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device, dtype=torch.float32)
                               for g in self.generators])
        return scores.float() - torch.log(-torch.log(uniform))  # a uniform 0 gives -inf: never chosen


class HFGenerator:
    """Batched sampling with ``model.generate`` (left padding), on CUDA when available, else CPU; every
    sample from its own seed (module docstring).

    ``dtype``: a torch dtype name; "auto" is bfloat16 on CUDA and float32 on CPU.
    """

    def __init__(self, model_name, sampling, render_options, dtype="auto"):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.tokenizer = load_tokenizer(model_name)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.render = PromptRenderer(self.tokenizer, **render_options)
        self.model = load_model(model_name, dtype=getattr(torch, dtype)).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        self.sampling = sampling

    def processors(self, seeds):
        """Hugging Face's sampling warpers in its order (temperature, top-k, top-p), then ``RowNoise``."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        s = self.sampling
        warpers = [TemperatureLogitsWarper(s.temperature)]
        if s.top_k > 0:
            warpers.append(TopKLogitsWarper(s.top_k))
        if s.top_p < 1:
            warpers.append(TopPLogitsWarper(s.top_p))
        return LogitsProcessorList([*warpers, RowNoise(seeds, self.device)])

    @torch.no_grad()
    def generate(self, questions, sample_ids):
        batch = self.tokenizer([self.render(q) for q in questions], return_tensors="pt", padding=True,
                               add_special_tokens=not self.render.chat_template).to(self.device)
        seeds = [sample_seed(self.sampling.seed, i) for i in sample_ids]
        # greedy over noised scores is sampling (RowNoise); the model's own sampling defaults are switched off
        output = self.model.generate(
            **batch, do_sample=False, temperature=None, top_p=None, top_k=None,
            logits_processor=self.processors(seeds), max_new_tokens=self.sampling.max_new_tokens,
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = output[:, batch["input_ids"].shape[1]:].tolist()
        return [self._generation(row) for row in new_tokens]

    def _generation(self, row):
        """The answer in one row of new tokens: up to its first end token (padding follows it)."""
        end = next((i for i, token in enumerate(row) if token in self.eos_ids), None)
        length = len(row) if end is None else end + 1
        return Generation(self.tokenizer.decode(row[:length], skip_special_tokens=True), tokens=length,
                          truncated=end is None)


class VLLMGenerator:
    """Sampling with vLLM's offline ``LLM.generate`` on prompts rendered by ``PromptRenderer``; each
    request carries its sample's seed (``SamplingParams(seed=...)``, a generator of its own in vLLM)."""

    def __init__(self, model_name, sampling, render_options, dtype="auto"):
        try:
            import vllm
        except ImportError:
            raise RuntimeError("backend 'vllm' needs vLLM installed (pip install vllm)") from None
        if model_name == BUILTIN_MODEL:
            raise ValueError(f"{BUILTIN_MODEL} exists only for the 'hf' backend")
        self.render = PromptRenderer(load_tokenizer(model_name), **render_options)
        self.llm = vllm.LLM(model=model_name, dtype=dtype, seed=sampling.seed)
        self.params = partial(vllm.SamplingParams, temperature=sampling.temperature, top_p=sampling.top_p,
                              top_k=sampling.top_k if sampling.top_k > 0 else -1, max_tokens=sampling.max_new_tokens)
        self.seed = sampling.seed

    def generate(self, questions, sample_ids):
        params = [self.params(seed=sample_seed(self.seed, i)) for i in sample_ids]
        outputs = self.llm.generate([self.render(q) for q in questions], params, use_tqdm=False)
        return [Generation(o.outputs[0].text, tokens=len(o.outputs[0].token_ids),
                           truncated=o.outputs[0].finish_reason == "length") for o in outputs]


BACKENDS = {"hf": HFGenerator, "vllm": VLLMGenerator}


def sample_missing(log, requests, load_generator, make_record, batch_size=8, desc="sample"):
    """Answer every request not yet in ``log`` and append its record; returns how many were sampled.

    ``log``: a ``jsonl.AppendLog``. ``requests``: dicts with a unique ``id`` (which names the sample:
    its problem and repetition; it seeds the sample, so batches may be formed in any way) and the
    ``prompt`` to answer. Each answer is appended as ``make_record(request, generation)`` (whose ``id`` is the
    request's) as soon as its batch is generated, so a crash loses at most the batch in flight, and a
    rerun samples exactly the requests whose records are missing: each id is written once.
    ``load_generator()`` is called only when some request is missing.
    """
    pending = [request for request in requests if request["id"] not in log]
    generator = load_generator() if pending else None
    with tqdm(total=len(pending), desc=desc, unit="sample") as progress:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            generations = generator.generate([r["prompt"] for r in batch], [r["id"] for r in batch])
            for request, generation in zip(batch, generations):
                log.append(make_record(request, generation))
            progress.update(len(batch))
    return len(pending)


def generator_loader(args, model_name):
    """A function that loads the generator for ``model_name`` with the options of ``add_sampling_arguments``."""
    sampling, render = sampling_settings(args)
    return partial(BACKENDS[args.backend], model_name, sampling, render, args.dtype)

