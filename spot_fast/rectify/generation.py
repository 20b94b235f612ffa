"""Sampling answers from the student model: Hugging Face ``generate``, or vLLM when installed.

A generator maps a list of questions to one sampled answer each (``Generation``: text, the number of
new tokens, end token included, and whether it stopped at the token limit rather than at an end
token); several samples of one question are that question repeated. Both backends render the
question the same way: as the user turn of the tokenizer's chat template with the generation prompt,
Qwen3 non-thinking mode by default (the template inserts an empty ``<think>`` block), or as the raw
question with ``chat_template=False``.

Sampling settings (``sampling_options.Sampling``) default to Qwen3's non-thinking recommendation: temperature 0.7,
top-p 0.8; top-k 0 means no top-k cut (both backends are told so explicitly, since Hugging Face
would otherwise apply its default of 50).

``sample_missing`` is the resumable sampling loop of every command that samples (``elicit``,
``spot-fast-eval``); ``generator_loader`` builds their generator from the options of
``sampling_options.add_sampling_arguments``.
"""
from dataclasses import dataclass
from functools import partial

import torch
from tqdm import tqdm

from spot_fast.models import BUILTIN_MODEL, load_model, load_tokenizer
from spot_fast.rectify.sampling_options import sampling_settings


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


class HFGenerator:
    """Batched sampling with ``model.generate`` (left padding), on CUDA when available, else CPU.

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
        torch.manual_seed(sampling.seed)

    @torch.no_grad()
    def generate(self, questions):
        batch = self.tokenizer([self.render(q) for q in questions], return_tensors="pt", padding=True,
                               add_special_tokens=not self.render.chat_template).to(self.device)
        s = self.sampling
        output = self.model.generate(
            **batch, do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
            max_new_tokens=s.max_new_tokens, eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = output[:, batch["input_ids"].shape[1]:].tolist()
        return [self._generation(row) for row in new_tokens]

    def _generation(self, row):
        """The answer in one row of new tokens: up to its first end token (padding follows it)."""
        end = next((i for i, token in enumerate(row) if token in self.eos_ids), None)
        length = len(row) if end is None else end + 1
        return Generation(self.tokenizer.decode(row[:length], skip_special_tokens=True), tokens=length,
                          truncated=end is None)


class VLLMGenerator:
    """Sampling with vLLM's offline ``LLM.generate`` on prompts rendered by ``PromptRenderer``."""

    def __init__(self, model_name, sampling, render_options, dtype="auto"):
        try:
            import vllm
        except ImportError:
            raise RuntimeError("backend 'vllm' needs vLLM installed (pip install vllm)") from None
        if model_name == BUILTIN_MODEL:
            raise ValueError(f"{BUILTIN_MODEL} exists only for the 'hf' backend")
        self.render = PromptRenderer(load_tokenizer(model_name), **render_options)
        self.llm = vllm.LLM(model=model_name, dtype=dtype, seed=sampling.seed)
        self.params = vllm.SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1, max_tokens=sampling.max_new_tokens)

    def generate(self, questions):
        outputs = self.llm.generate([self.render(q) for q in questions], self.params, use_tqdm=False)
        return [Generation(o.outputs[0].text, tokens=len(o.outputs[0].token_ids),
                           truncated=o.outputs[0].finish_reason == "length") for o in outputs]


BACKENDS = {"hf": HFGenerator, "vllm": VLLMGenerator}


def sample_missing(log, requests, load_generator, make_record, batch_size=8, desc="sample"):
    """Answer every request not yet in ``log`` and append its record; returns how many were sampled.

    ``log``: a ``jsonl.AppendLog``. ``requests``: dicts with a unique ``id`` and the ``prompt`` to
    answer. Each answer is appended as ``make_record(request, generation)`` (whose ``id`` is the
    request's) as soon as its batch is generated, so a crash loses at most the batch in flight, and a
    rerun samples exactly the requests whose records are missing: each id is written once.
    ``load_generator()`` is called only when some request is missing.
    """
    pending = [request for request in requests if request["id"] not in log]
    generator = load_generator() if pending else None
    with tqdm(total=len(pending), desc=desc, unit="sample") as progress:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            for request, generation in zip(batch, generator.generate([r["prompt"] for r in batch])):
                log.append(make_record(request, generation))
            progress.update(len(batch))
    return len(pending)


def generator_loader(args, model_name):
    """A function that loads the generator for ``model_name`` with the options of ``add_sampling_arguments``."""
    sampling, render = sampling_settings(args)
    return partial(BACKENDS[args.backend], model_name, sampling, render, args.dtype)

