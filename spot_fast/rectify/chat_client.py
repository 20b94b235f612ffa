"""A client for OpenAI-compatible ``POST {base_url}/chat/completions`` endpoints, standard library only.

``ChatClient.complete(messages)`` returns the assistant message's text. Each call is one logical
request with its own retry loop, so it is safe to call from many threads at once; the caller bounds
the concurrency (see ``correct.run_bounded``).

Retry policy: a failed attempt is retried when the failure is transient - HTTP 408, 409, 425, 429 or
any 5xx, a connection error, a timeout, or a body that is not a chat completion (not JSON, no
``choices[0].message.content`` string). Other HTTP errors (400, 401, 403, 404, ...) are permanent and
raise ``OracleError`` at once. Before attempt ``k + 1`` the client sleeps the server's
``Retry-After`` seconds when given, else a uniformly random time in
``[0, min(max_backoff, backoff * 2**k)]`` ("full jitter" exponential backoff: retries from many
threads spread out instead of arriving together). After ``max_retries`` retries it raises
``OracleError`` with the last failure.

``timeout`` is the socket timeout of each attempt: connecting, and every wait for data from the server,
must finish within it, so a stalled server costs at most ``timeout`` per attempt.

Circuit breaker: an attempt that gets no HTTP response at all (a connection error or a timeout) is a
connection failure. After ``max_connection_failures`` of them in a row, counted over all threads
and reset by any HTTP response (an error status too), the endpoint is taken for down: that call and
every later one raise ``OracleUnreachable`` naming the endpoint and the last failure, at once,
instead of retrying each request against a dead endpoint.

``stats`` counts attempts, and failed attempts by cause, for the stage summary.
"""
import http.client
import itertools
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

RETRY_STATUS = frozenset({408, 409, 425, 429})
NO_RESPONSE = frozenset({"connection error", "timeout"})  # failure causes that count for the circuit breaker


class OracleError(RuntimeError):
    """The Oracle could not answer (a permanent HTTP error, or retries exhausted)."""


class OracleUnreachable(RuntimeError):
    """The endpoint gave no response to ``max_connection_failures`` attempts in a row (the circuit breaker)."""


class _Transient(Exception):
    def __init__(self, cause, retry_after=None, detail=None):
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after
        self.detail = detail or cause


def _retry_after_seconds(headers):
    value = headers.get("Retry-After") if headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to the backoff schedule
        return None


def message_text(body):
    """``choices[0].message.content`` of a chat completion body; raises ``ValueError`` otherwise."""
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"not a chat completion ({type(e).__name__}: {e})") from None
    if not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, not a string")
    return content


class ChatClient:
    """One OpenAI-compatible endpoint and model (see the module docstring)."""

    def __init__(self, base_url, model, api_key=None, timeout=600.0, max_retries=6, backoff=1.0,
                 max_backoff=60.0, extra_body=None, seed=None, max_connection_failures=32):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.extra_body = dict(extra_body or {})
        self.max_connection_failures = max_connection_failures
        self.stats = Counter()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._connection_failures = 0  # in a row, over all threads
        self._unreachable = None       # the breaker's message once it has opened

    def _count(self, key):
        with self._lock:
            self.stats[key] += 1

    def backoff_delay(self, retry):
        """Seconds to sleep before retry number ``retry`` (0-based) without a Retry-After."""
        with self._lock:
            return self._random.uniform(0.0, min(self.max_backoff, self.backoff * 2 ** retry))

    def _track_connection(self, failure=None):
        """The circuit breaker (see the module docstring): ``failure`` is a failed attempt's ``_Transient``,
        None for an attempt that got a response. A connection failure raises ``OracleUnreachable`` once
        the breaker is open; a response is never thrown away."""
        with self._lock:
            if failure is None or failure.cause not in NO_RESPONSE:
                self._connection_failures = 0
                return
            self._connection_failures += 1
            if self._connection_failures >= self.max_connection_failures and self._unreachable is None:
                self._unreachable = (f"the Oracle at {self.url} gave no response to {self._connection_failures} "
                                     f"attempts in a row (last: {failure.detail})")
            if self._unreachable is not None:
                raise OracleUnreachable(self._unreachable)

    def complete(self, messages):
        """The assistant's reply to ``messages`` (a list of ``{"role", "content"}`` dicts)."""
        body = json.dumps({**self.extra_body, "model": self.model, "messages": messages}).encode("utf-8")
        for retry in itertools.count():
            if self._unreachable is not None:
                raise OracleUnreachable(self._unreachable)
            self._count("attempts")
            try:
                reply = self._attempt(body)
            except _Transient as failure:
                self._count(f"failed: {failure.cause}")
                self._track_connection(failure)
                if retry >= self.max_retries:
                    raise OracleError(
                        f"{self.url}: gave up after {retry + 1} attempts, last: {failure.cause}")
                delay = failure.retry_after
                time.sleep(min(delay, self.max_backoff) if delay is not None else self.backoff_delay(retry))
            except OracleError:  # a permanent HTTP error: the endpoint did respond
                self._track_connection()
                raise
            else:
                self._track_connection()
                return reply

    def _attempt(self, body):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            if e.code in RETRY_STATUS or e.code >= 500:
                raise _Transient(f"HTTP {e.code}", _retry_after_seconds(e.headers)) from None
            detail = e.read()[:500].decode("utf-8", "replace")
            raise OracleError(f"{self.url}: HTTP {e.code} (not retried): {detail}") from None
        except urllib.error.URLError as e:
            cause = "timeout" if isinstance(e.reason, TimeoutError) else "connection error"
            raise _Transient(cause, detail=f"{cause}: {e.reason}") from None
        except TimeoutError:
            raise _Transient("timeout", detail=f"timeout: no data for {self.timeout} s") from None
        except (OSError, http.client.HTTPException) as e:  # resets, TLS errors, truncated responses
            raise _Transient("connection error", detail=f"connection error: {type(e).__name__}: {e}") from None
        try:
            return message_text(raw)
        except ValueError:
            raise _Transient("malformed body") from None
