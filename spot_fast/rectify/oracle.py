r"""Oracles: what turns a wrong answer y- into a minimally edited correct answer y+.

An Oracle is anything that fits ``Oracle``: a callable ``oracle(question=..., wrong_answer=...,
ground_truth=...)`` that returns the corrected answer text, or None when it has no correction to offer
(final: not asked again), or raises ``UnmarkedReply`` when it replied without a usable correction
(asked again on a later run, up to a limit). It may be called from several threads at once. Two kinds:

- ``ChatOracle``: a chat model behind an OpenAI-compatible endpoint, asked with ``CORRECTION_PROMPT``
  (the one statement of what a correction must be) to reply with the corrected answer between
  ``BEGIN`` and ``END`` markers (``extract_marked``). A reply without a complete marked block raises
  ``UnmarkedReply``.
- a Python function named ``module:function`` (``load_callable``), e.g. a rule-based fixer or a
  wrapper around another model; its return value is the correction as is.

``make_oracle`` builds either from plain options. What a provider takes beyond the OpenAI-compatible
API (Gemini's thinking budget) is a ``PROVIDER_OPTIONS`` entry: the request-body fragment that carries
its value; ``spot-fast-rectify correct`` offers each entry as an option of its own. A new provider's
option is one more entry there, not code in the factory.

``replace_final_answer`` is a rule-based Oracle for demonstrations and smoke tests: it rewrites the final
boxed value, or appends a boxed final answer to an answer without one, so its pairs teach nothing
about reasoning and are not training data.
"""
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from spot_fast.cli import number
from spot_fast.rectify.chat_client import ChatClient
from spot_fast.sampling.answers import last_boxed_span



class Oracle(Protocol):
    """The interface of every Oracle (see the module docstring); ``correct.correct`` calls it for each
    wrong answer, from up to ``concurrency`` threads at once."""

    def __call__(self, question: str, wrong_answer: str, ground_truth: str) -> str | None:
        """The corrected answer, or None when there is none to offer (final: not asked again); raises
        ``UnmarkedReply`` for a reply without a usable correction (asked again on a later run)."""


BEGIN = "<corrected_answer>"
END = "</corrected_answer>"

CORRECTION_PROMPT = """\
A student solved the math problem below, but the final answer is wrong. The correct final answer \
is: {ground_truth}

Correct the student's solution with minimal edits:
- Find the first step that is wrong and fix it, then redo only the steps that depend on it.
- Keep everything else exactly as the student wrote it: the same wording, notation, formatting, \
line breaks, and level of detail. Do not rephrase, shorten, or add explanations of your own.
- The corrected solution must reach the correct final answer and state it as \\boxed{{...}} at the \
end, as the student did (or should have).

Problem:
{question}

Student's solution:
{wrong_answer}

Reply with the corrected solution only, between the lines {begin} and {end}, like this:
{begin}
(the corrected solution)
{end}"""


def correction_messages(question, wrong_answer, ground_truth):
    """The chat messages that ask a model for a minimal-edit correction."""
    prompt = CORRECTION_PROMPT.format(question=question, wrong_answer=wrong_answer,
                                      ground_truth=ground_truth, begin=BEGIN, end=END)
    return [{"role": "user", "content": prompt}]


def extract_marked(reply):
    """The corrected answer in an Oracle's ``reply``: the last complete marked block, unfenced.

    The block is the text between the last ``END`` and the nearest ``BEGIN`` before it, so a marker
    mentioned outside the block (a closing note such as "only the text inside <corrected_answer>
    counts", or the markers quoted before the block) does not hide it. The text is stripped and a code
    fence wrapping all of it is removed (``strip_fence``): it is not part of the answer, and in a
    training target it would inflate the change ratio and teach the model to write fences.
    None when there is no complete block.
    """
    end = reply.rfind(END)
    if end < 0:
        return None
    start = reply.rfind(BEGIN, 0, end)
    if start < 0:
        return None
    return strip_fence(reply[start + len(BEGIN):end].strip())


_FENCE_OPENING = re.compile(r"(`{3,}|~{3,})[^`\n]*")


def strip_fence(text):
    """``text`` without a Markdown code fence that wraps all of it (CommonMark rules), else ``text``.

    A fence wraps all of ``text`` when its first line opens a fence (three or more backticks or
    tildes, then an optional info string such as ``latex``) and the first line that closes it (the same
    character, at least as many, nothing else) is the last line. A fence that closes earlier is a code
    block inside the answer, which is kept as written.
    """
    lines = text.split("\n")
    opening = _FENCE_OPENING.fullmatch(lines[0].strip())
    if opening is None or len(lines) < 2:
        return text
    fence = opening.group(1)
    closing = re.compile(re.escape(fence[0]) + "{" + str(len(fence)) + ",}")
    close_at = next((i for i, line in enumerate(lines[1:], 1) if closing.fullmatch(line.strip())), None)
    if close_at != len(lines) - 1:
        return text
    return "\n".join(lines[1:-1]).strip()


class UnmarkedReply(Exception):
    """The Oracle's ``reply`` holds no marked correction: a failed attempt, worth asking again."""

    def __init__(self, reply):
        super().__init__("the reply holds no marked correction")
        self.reply = reply


class ChatOracle:
    """An Oracle backed by a chat model (see the module docstring)."""

    def __init__(self, client: ChatClient):
        self.client = client

    def __call__(self, question, wrong_answer, ground_truth):
        reply = self.client.complete(correction_messages(question, wrong_answer, ground_truth))
        correction = extract_marked(reply)
        if correction is None:
            raise UnmarkedReply(reply)
        return correction


def load_callable(spec):
    """The function named by ``"package.module:function"``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"oracle {spec!r} is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"oracle {spec!r}: cannot import {module_name!r} ({e})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"oracle {spec!r}: {module_name!r} has no function {attribute!r}")
    return function


@dataclass(frozen=True)
class ProviderOption:
    """An option that some provider takes beyond the OpenAI-compatible API, sent in every request:
    ``body(value)`` is the fragment of the request body that carries ``value``; ``type`` parses and
    checks a value given as text, ``help`` says what it is."""

    type: Callable[[str], Any]
    help: str
    body: Callable[[Any], dict]


# name -> option; ``spot-fast-rectify correct`` offers each as --NAME (with dashes for underscores)
PROVIDER_OPTIONS = {
    "thinking_budget": ProviderOption(
        type=number(int, lambda v: v >= -1, ">= -1 (-1: dynamic)"),
        help="Gemini thinking budget (sent as extra_body.google.thinking_config.thinking_budget; default: not sent)",
        body=lambda budget: {"extra_body": {"google": {"thinking_config": {"thinking_budget": budget}}}}),
}


def merged(body, fragment):
    """``body`` with ``fragment`` merged in: objects in both merged key by key, any other value of
    ``fragment`` replacing ``body``'s."""
    out = dict(body)
    for key, value in fragment.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def request_body(extra_body=None, provider_options=None):
    """The fields merged into every chat request: ``extra_body``, then the fragment of each of
    ``provider_options`` (name -> value; None: not sent) on top."""
    body = dict(extra_body or {})
    for name, value in (provider_options or {}).items():
        if name not in PROVIDER_OPTIONS:
            raise ValueError(f"no provider option {name!r} (have: {', '.join(PROVIDER_OPTIONS)})")
        if value is not None:
            body = merged(body, PROVIDER_OPTIONS[name].body(value))
    return body


def make_oracle(callable_spec=None, *, base_url=None, model=None, extra_body=None, provider_options=None,
                **client_options) -> tuple[Oracle, ChatClient | None]:
    """(the Oracle, the ``ChatClient`` behind it or None): the function ``callable_spec`` names
    (``module:function``), else a ``ChatOracle`` asking ``model`` at ``base_url``, with
    ``request_body(extra_body, provider_options)`` in every request. ``client_options`` go to the
    ``ChatClient`` (``api_key``, ``timeout``, ``max_retries``, ``backoff``, ``max_connection_failures``)."""
    if callable_spec:
        return load_callable(callable_spec), None
    if not base_url or not model:
        raise ValueError("an Oracle needs a function (module:function), or a base URL and a model")
    client = ChatClient(base_url, model, extra_body=request_body(extra_body, provider_options), **client_options)
    return ChatOracle(client), client


def replace_final_answer(question, wrong_answer, ground_truth):
    r"""The wrong answer with the content of its last box replaced by the ground truth, or with
    ``The answer is \boxed{truth}.`` appended when it has no complete box (demonstration Oracle)."""
    span = last_boxed_span(wrong_answer)
    if span is not None:
        return wrong_answer[:span[0]] + ground_truth + wrong_answer[span[1]:]
    separator = "" if not wrong_answer or wrong_answer.endswith("\n") else "\n"
    return f"{wrong_answer}{separator}The answer is \\boxed{{{ground_truth}}}."
