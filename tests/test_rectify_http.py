"""The OpenAI-compatible Oracle against a real HTTP server on 127.0.0.1 (spot_fast.rectify.chat_client,
spot_fast.rectify.oracle, and the correct stage's concurrency bound)."""
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spot_fast.jsonl import read_jsonl, write_jsonl_atomic
from spot_fast.rectify import layout
from spot_fast.rectify.__main__ import main, oracle_from_options, parser
from spot_fast.rectify.chat_client import ChatClient, OracleError, OracleUnreachable
from spot_fast.rectify.correct import (ASKED, BEFORE, CORRECTED, FAILED, GAVE_UP, UNFINISHED, UNMARKED,
                                       WITH_CORRECTION, WITHOUT_CORRECTION, correct)
from spot_fast.rectify.oracle import BEGIN, END, ChatOracle, UnmarkedReply


def completion(content):
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}).encode()


def marked(text):
    return f"<think>the step 2 sum is off</think>\nHere it is.\n{BEGIN}\n{text}\n{END}\n"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    headers: dict = field(default_factory=dict)
    hang_up: bool = False  # close the connection without a response (a connection failure for the client)


class ChatServer:
    """``POST /v1/chat/completions`` on 127.0.0.1 with an OS-chosen port. ``respond(n, request)`` gives
    the ``Reply`` to the n-th request (0-based; ``request`` is the parsed JSON body). Records every
    request with its headers, and the largest number of requests being handled at once."""

    def __init__(self, respond):
        self.respond = respond
        self.requests = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    n = len(server.requests)
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.respond(n, body)
                    time.sleep(reply.delay)
                finally:  # before the reply is sent: the client's next request may come right after it
                    with server.lock:
                        server.in_flight -= 1
                if reply.hang_up:
                    return
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    servers = []

    def start(respond):
        servers.append(ChatServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def scripted(*replies, then=None):
    """Replies in order, then ``then`` for every later request."""
    return lambda n, request: replies[n] if n < len(replies) else then


def client(server, **options):
    return ChatClient(server.base_url, "oracle-model", **{"backoff": 0.01, "timeout": 5.0, **options})


def test_request_and_marker_stripping(serve):
    server = serve(scripted(then=Reply(body=completion(marked("13 + 44 = 57.\nThe answer is \\boxed{57}.")))))
    args = parser().parse_args([
        "correct", "--workdir", "unused", "--base-url", server.base_url, "--oracle-model", "gemini-x",
        "--api-key", "sk-test", "--thinking-budget", "512", "--extra-body", '{"temperature": 0}'])
    oracle, _ = oracle_from_options(args)
    correction = oracle(question="What is 13 + 44?", wrong_answer="13 + 44 = 56.\nThe answer is \\boxed{56}.",
                        ground_truth="57")
    assert correction == "13 + 44 = 57.\nThe answer is \\boxed{57}."
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "gemini-x" and body["temperature"] == 0
    assert body["extra_body"]["google"]["thinking_config"]["thinking_budget"] == 512
    [message] = body["messages"]
    assert message["role"] == "user"
    for part in ("What is 13 + 44?", "The answer is \\boxed{56}.", "57", BEGIN, END):
        assert part in message["content"]


@pytest.mark.parametrize("reply", [
    "I think the answer is 57.",
    f"{BEGIN}\n13 + 44 = 57, cut off here",
    f"{END} {BEGIN}",
])
def test_reply_without_a_complete_marked_block_is_an_unmarked_reply(serve, reply):
    server = serve(scripted(then=Reply(body=completion(reply))))
    with pytest.raises(UnmarkedReply) as raised:
        ChatOracle(client(server))(question="q", wrong_answer="w", ground_truth="1")
    assert raised.value.reply == reply


def test_retries_429_and_5xx_and_honours_retry_after(serve):
    server = serve(scripted(Reply(429, b"slow down", headers={"Retry-After": "0.3"}), Reply(500), Reply(503),
                            then=Reply(body=completion("fine"))))
    chat = client(server)
    start = time.perf_counter()
    assert chat.complete([{"role": "user", "content": "hi"}]) == "fine"
    assert time.perf_counter() - start >= 0.3
    assert len(server.requests) == 4
    assert chat.stats == {"attempts": 4, "failed: HTTP 429": 1, "failed: HTTP 500": 1, "failed: HTTP 503": 1}


@pytest.mark.parametrize("status", [400, 401, 404])
def test_permanent_errors_are_not_retried(serve, status):
    server = serve(scripted(then=Reply(status, b'{"error": "no"}')))
    with pytest.raises(OracleError, match=f"HTTP {status}"):
        client(server).complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1


def test_gives_up_after_max_retries(serve):
    server = serve(scripted(then=Reply(502)))
    with pytest.raises(OracleError, match="gave up after 3 attempts, last: HTTP 502"):
        client(server, max_retries=2).complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 3


def test_slow_reply_times_out_and_is_retried(serve):
    server = serve(scripted(Reply(body=completion("late"), delay=1.5),
                            then=Reply(body=completion("on time"))))
    chat = client(server, timeout=0.3)
    start = time.perf_counter()
    assert chat.complete([{"role": "user", "content": "hi"}]) == "on time"
    assert time.perf_counter() - start < 1.2
    assert chat.stats["failed: timeout"] == 1


def test_malformed_bodies_are_retried(serve):
    server = serve(scripted(
        Reply(body=b"<html>bad gateway</html>"),
        Reply(body=b'{"choices": []}'),
        Reply(body=json.dumps({"choices": [{"message": {"content": None}}]}).encode()),
        Reply(body=b'{"choices": [{"message": {"content": "ok"'),
        then=Reply(body=completion("ok"))))
    chat = client(server)
    assert chat.complete([{"role": "user", "content": "hi"}]) == "ok"
    assert chat.stats["failed: malformed body"] == 4


def test_backoff_is_jittered_exponential_and_capped():
    chat = ChatClient("http://127.0.0.1:9/v1", "m", backoff=0.5, max_backoff=3.0, seed=0)
    for retry, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (8, 3.0)]:
        delays = [chat.backoff_delay(retry) for _ in range(300)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > 0.9 * cap and min(delays) < 0.1 * cap


def write_errors(workdir, count):
    errors = [{"id": f"e{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i),
               "response": f"{i} + {i} = {2 * i + 1}.\nThe answer is \\boxed{{{2 * i + 1}}}."}
              for i in range(count)]
    write_jsonl_atomic(workdir / layout.ERRORS, errors)
    return errors


def fix_from_prompt(n, request, delay=0.0):
    """A server-side Oracle: the minimal edit of the student's answer quoted in the prompt."""
    prompt = request["messages"][0]["content"]
    i = int(prompt.split("What is ")[1].split(" +")[0])
    fixed = f"{i} + {i} = {2 * i}.\nThe answer is \\boxed{{{2 * i}}}."
    return Reply(body=completion(marked(fixed)), delay=delay)


def test_correct_stage_keeps_at_most_concurrency_requests_in_flight(serve, tmp_path):
    errors = write_errors(tmp_path, 24)
    server = serve(lambda n, request: fix_from_prompt(n, request, delay=0.1))
    summary = correct(tmp_path, ChatOracle(client(server)), concurrency=3)
    assert server.max_in_flight == 3
    assert summary[FAILED] == 0 and summary[CORRECTED] == summary[WITH_CORRECTION] == 24
    written = {line.record["id"]: line.record for line in read_jsonl(tmp_path / layout.CORRECTIONS)}
    assert sorted(written) == sorted(e["id"] for e in errors)
    assert written["e7"]["correction"] == "7 + 7 = 14.\nThe answer is \\boxed{14}."


def test_failed_requests_write_nothing_and_are_retried_next_run(serve, tmp_path):
    write_errors(tmp_path, 6)
    down = serve(lambda n, request: Reply(503) if "What is 4 +" in request["messages"][0]["content"]
                 else fix_from_prompt(n, request))
    summary = correct(tmp_path, ChatOracle(client(down, max_retries=1)), concurrency=2)
    assert summary[FAILED] == summary[UNFINISHED] == 1
    assert "e4" not in {line.record["id"] for line in read_jsonl(tmp_path / layout.CORRECTIONS)}

    up = serve(fix_from_prompt)
    summary = correct(tmp_path, ChatOracle(client(up)), concurrency=2)
    assert summary[FAILED] == summary[UNFINISHED] == 0 and summary[BEFORE] == 5 and summary[ASKED] == 1
    assert len(up.requests) == 1
    ids = [line.record["id"] for line in read_jsonl(tmp_path / layout.CORRECTIONS)]
    assert sorted(ids) == [f"e{i}" for i in range(6)]


def test_command_line_exit_status_reports_failures(serve, tmp_path, capsys):
    write_errors(tmp_path, 3)
    server = serve(lambda n, request: Reply(503) if "What is 1 +" in request["messages"][0]["content"]
                   else fix_from_prompt(n, request))
    argv = ["correct", "--workdir", str(tmp_path), "--base-url", server.base_url, "--oracle-model", "m",
            "--max-retries", "1", "--backoff", "0.01"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"{FAILED}: 1" in out and f"{UNFINISHED}: 1" in out
    assert "http failed: HTTP 503: 2" in out and "http attempts: 4" in out


def answer_of(request):
    """The i of the error 'What is i + i?' that a correction request quotes."""
    return int(request["messages"][0]["content"].split("What is ")[1].split(" +")[0])


def test_unmarked_replies_are_stored_and_asked_again_up_to_the_limit(serve, tmp_path, capsys):
    """e1 never marks its correction, e2 only on its second request: each reply without a marked
    correction is kept and asked again on the next run, until the third, which is final without one."""
    write_errors(tmp_path, 4)
    asked = []

    def respond(n, request):
        i = answer_of(request)
        asked.append(i)
        if i == 1 or (i == 2 and asked.count(2) == 1):
            return Reply(body=completion(f"I would change step {i}, but here is no block."))
        return fix_from_prompt(n, request)

    server = serve(respond)
    argv = ["correct", "--workdir", str(tmp_path), "--base-url", server.base_url, "--oracle-model", "m",
            "--max-unmarked-replies", "3"]
    assert main(argv) == 1  # not final yet: run again
    out = capsys.readouterr().out
    assert f"{UNMARKED}: 2" in out and f"{CORRECTED}: 2" in out and f"{UNFINISHED}: 2" in out
    assert f"{FAILED}: 0" in out and f"{WITHOUT_CORRECTION}: 0" in out
    final = {line.record["id"] for line in read_jsonl(tmp_path / layout.CORRECTIONS)}
    assert final == {"e0", "e3"}

    assert main(argv) == 1  # e2 answers now; e1's second unmarked reply
    assert sorted(asked[4:]) == [1, 2]
    assert main(argv) == 0  # e1's third unmarked reply: given up, final without a correction
    out = capsys.readouterr().out
    assert asked[6:] == [1]
    assert f"{ASKED}: 1" in out and f"{GAVE_UP}: 1" in out and f"{UNMARKED}: 0" in out
    assert f"{WITH_CORRECTION}: 3" in out and f"{WITHOUT_CORRECTION}: 1" in out and f"{UNFINISHED}: 0" in out
    assert main(argv) == 0 and len(asked) == 7  # nothing left to ask

    final = {line.record["id"]: line.record for line in read_jsonl(tmp_path / layout.CORRECTIONS)}
    assert sorted(final) == ["e0", "e1", "e2", "e3"] and final["e1"]["correction"] is None
    assert final["e2"]["correction"] == "2 + 2 = 4.\nThe answer is \\boxed{4}."
    stored = [line.record for line in read_jsonl(tmp_path / layout.UNMARKED)]
    assert sorted(r["id"] for r in stored) == ["e1/1", "e1/2", "e1/3", "e2/1"]
    assert all(r["reply"] == f"I would change step {r['error_id'][1]}, but here is no block." for r in stored)


def dead_endpoint():
    """The URL of a port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_circuit_breaker_stops_the_stage_and_a_rerun_resumes(serve, tmp_path, capsys):
    write_errors(tmp_path, 12)
    # Three answers, then the endpoint hangs up on every request.
    flaky = serve(lambda n, request: fix_from_prompt(n, request) if n < 3 else Reply(hang_up=True))
    chat = client(flaky, backoff=0.001, max_retries=6, max_connection_failures=5)
    with pytest.raises(OracleUnreachable, match=f"{flaky.base_url}/chat/completions gave no response to 5 "
                                                r"attempts in a row \(last: connection error"):
        correct(tmp_path, ChatOracle(chat), concurrency=1)
    assert len(flaky.requests) == 3 + 5 and chat.stats["failed: connection error"] == 5
    with pytest.raises(OracleUnreachable):  # open for good: later calls send nothing
        chat.complete([{"role": "user", "content": "hi"}])
    assert len(flaky.requests) == 3 + 5
    kept = [line.record["id"] for line in read_jsonl(tmp_path / layout.CORRECTIONS)]
    assert len(kept) == 3

    # A dead endpoint, through the command line: a few fast attempts, then a message naming it.
    dead = dead_endpoint()
    argv = ["correct", "--workdir", str(tmp_path), "--base-url", dead, "--oracle-model", "m", "--concurrency", "4",
            "--backoff", "0.001", "--max-connection-failures", "6"]
    start = time.perf_counter()
    assert main(argv) == 3
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert f"the Oracle at {dead}/chat/completions gave no response to 6 attempts in a row" in err
    assert "run the same command to resume" in err

    up = serve(fix_from_prompt)
    summary = correct(tmp_path, ChatOracle(client(up)), concurrency=4)
    assert summary[BEFORE] == 3 and summary[ASKED] == 9 == len(up.requests) and summary[UNFINISHED] == 0
    ids = [line.record["id"] for line in read_jsonl(tmp_path / layout.CORRECTIONS)]
    assert sorted(ids) == sorted(f"e{i}" for i in range(12)) and ids[:3] == kept


def test_circuit_breaker_counts_only_failures_in_a_row(serve, tmp_path):
    """Every other request is hung up on, more often in all than the limit: any response resets the count."""
    write_errors(tmp_path, 6)
    server = serve(lambda n, request: Reply(hang_up=True) if n % 2 == 0 else fix_from_prompt(n, request))
    chat = client(server, backoff=0.001, max_connection_failures=2)
    summary = correct(tmp_path, ChatOracle(chat), concurrency=1)
    assert summary[CORRECTED] == 6 and chat.stats["failed: connection error"] == 6
