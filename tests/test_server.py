"""`tunesmith serve`'s OpenAI-compatible server, over real HTTP on 127.0.0.1, with stories260K."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest


@pytest.fixture(scope="module")
def generator(stories_dir):
    import torch

    from tunesmith.inference.generation import Generator
    from tunesmith.models.loading import load_for_inference

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 260K-parameter model gains nothing from threads, and they contend on shared CPUs
    yield Generator(load_for_inference(str(stories_dir)))
    torch.set_num_threads(threads)


@pytest.fixture
def server(generator):
    from tunesmith.inference.server import ModelServer

    with ModelServer(generator, "stories", api_key="k3y", max_requests=50, batch_wait=0.2) as running:
        yield running
    assert not running.worker.thread.is_alive()


def call(url, body=None, key="k3y"):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_and_chat_completion(server):
    status, models = call(server.url + "/models")
    assert status == 200 and models["data"][0]["id"] == "stories"
    body = {"model": "stories", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 12}
    status, reply = call(server.url + "/chat/completions", body)
    assert status == 200 and reply["object"] == "chat.completion"
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert 0 < reply["usage"]["completion_tokens"] <= 14 and reply["usage"]["prompt_tokens"] > 0
    status, again = call(server.url + "/chat/completions", body)
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]  # greedy is deterministic


def test_errors_in_openai_format(server):
    url = server.url + "/chat/completions"
    assert call(url, {"messages": [{"role": "user", "content": "hi"}]}, key="wrong")[0] == 401
    for body in ({"messages": []}, {"messages": [{"role": "robot", "content": "x"}]},
                 {"messages": [{"role": "user", "content": "x"}], "stream": True},
                 {"messages": [{"role": "user", "content": "x"}], "temperature": -1}):
        status, reply = call(url, body)
        assert status == 400 and reply["error"]["type"] == "invalid_request_error"
    assert call(server.url + "/nowhere")[0] == 404


def test_concurrent_requests_are_batched(server):
    body = {"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 8, "temperature": 0}
    results = []
    threads = [threading.Thread(target=lambda: results.append(call(server.url + "/chat/completions", body)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in results] == [200] * 4
    assert max(server.worker.batches) > 1


def test_a_client_that_gives_up_is_no_server_error(server, capsys):
    import time

    body = {"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 48}
    request = urllib.request.Request(server.url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer k3y"})
    before = server.served
    with pytest.raises(OSError):  # the client's timeout
        urllib.request.urlopen(request, timeout=0.001)
    deadline = time.time() + 60
    while server.served == before and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert server.served == before + 1 and "Traceback" not in capsys.readouterr().err
    assert call(server.url + "/models")[0] == 200  # still serving


def test_max_requests_stops_the_server(generator):
    from tunesmith.inference.server import ModelServer

    running = ModelServer(generator, "stories", max_requests=1)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    status, _ = call(running.url + "/chat/completions",
                     {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, key=None)
    assert status == 200
    assert running.finished.wait(10)
    running.httpd.server_close()
    running.worker.stop()


@pytest.mark.slow
def test_cli_serve_process_answers_and_stops_by_itself(stories_dir):
    import re
    import subprocess
    import sys
    import time

    import os

    process = subprocess.Popen([sys.executable, "-m", "tunesmith.cli.main", "serve", str(stories_dir), "--port", "0",
                                "--max-requests", "2", "--threads", "1"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # tiny model: threads only contend
    try:
        url, deadline = None, time.time() + 120
        while url is None and time.time() < deadline:
            line = process.stderr.readline()
            if match := re.search(r"(http://127\.0\.0\.1:\d+/v1)", line):
                url = match.group(1)
        assert url, "the server did not report its address"
        assert call(url + "/models", key=None)[0] == 200
        status, reply = call(url + "/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 6}, key=None)
        assert status == 200 and reply["choices"][0]["message"]["content"] is not None
        assert call(url + "/chat/completions", {"messages": []}, key=None)[0] == 400
        assert process.wait(timeout=30) == 0  # --max-requests 2 reached: it exits on its own
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- hostile and concurrent clients (the hardening issue, part 2)


@pytest.fixture
def open_server(generator):
    from tunesmith.inference.server import ModelServer

    with ModelServer(generator, "stories", batch_wait=0.05) as running:
        yield running
    assert not running.worker.thread.is_alive()


def raw_post(server, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """A POST with exactly these headers (http.client adds none of its own for the body)."""
    import http.client

    host, port = server.httpd.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def _chat(**fields) -> dict:
    return {"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 4, **fields}


BAD_REQUESTS = [
    ("stop-number", _chat(stop=5), 400, "stop"),
    ("stop-too-many", _chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("max-tokens-zero", _chat(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-negative", _chat(max_tokens=-5), 400, "max_tokens"),
    ("max-tokens-string", _chat(max_tokens="12"), 400, "max_tokens"),
    ("max-tokens-beyond-context", _chat(max_tokens=10**6), 400, "max_tokens"),
    ("temperature-negative", _chat(temperature=-1), 400, "temperature"),
    ("temperature-huge", _chat(temperature=1e300), 400, "temperature"),
    ("temperature-bool", _chat(temperature=True), 400, "temperature"),
    ("top-p-zero", _chat(top_p=0), 400, "top_p"),
    ("seed-2-70", _chat(seed=2**70), 400, "seed"),
    ("seed-float", _chat(seed=1.5), 400, "seed"),
    ("n-two", _chat(n=2), 400, "n"),
    ("content-parts-not-text", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, 400,
     "messages[0].content"),
    ("prompt-beyond-context", {"messages": [{"role": "user", "content": "Once upon a time " * 400}]}, 400,
     "context"),
    ("prompt-megabyte", {"messages": [{"role": "user", "content": "a" * 2**20}]}, 400, "context"),
]


@pytest.mark.parametrize("body,status,names", [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_fields_are_a_400_naming_the_field(open_server, body, status, names):
    code, reply = call(open_server.url + "/chat/completions", body, key=None)
    assert code == status and names in reply["error"]["message"], reply


@pytest.mark.parametrize("raw,headers,status", [
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', {}, 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}', {}, 400),
    (b"{}", {"Content-Length": "abc"}, 400),
    (b"{}", {"Content-Length": "-1"}, 400),
    (b"", {"Content-Length": str(2**40)}, 413),
    (b"[1, 2]", {}, 400),
    (b"\xff\xfe", {}, 400),
], ids=["nan", "1e999", "length-abc", "length-negative", "length-huge", "not-an-object", "not-utf8"])
def test_malformed_bodies_are_answered(open_server, raw, headers, status, capsys):
    code, reply = raw_post(open_server, raw, {"Content-Type": "application/json",
                                              "Content-Length": str(len(raw)), **headers})
    assert code == status and reply["error"]["message"]
    assert call(open_server.url + "/models", key=None)[0] == 200  # still serving
    assert "Traceback" not in capsys.readouterr().err


def test_twenty_parallel_requests_of_different_lengths_all_succeed(open_server):
    """Once, 8 of 20 failed with 'Unable to create tensor ... padding=True': the handler threads counted tokens with the
    tokenizer the generating thread was padding with."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [_chat(messages=[{"role": "user", "content": "Once upon a time " * (1 + i % 5)}]) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda body: call(open_server.url + "/chat/completions", body, key=None), bodies))
    assert [status for status, _ in results] == [200] * 20, [r for r in results if r[0] != 200][:2]


class _SlowGenerator:
    """Stands in for a Generator: each generation waits until released (or told to stop)."""

    def __init__(self, generator):
        self.tokenizer, self.template, self.model = generator.tokenizer, generator.template, generator.model
        self.release, self.started = threading.Event(), threading.Event()

    def generate(self, conversations, options, streamer=None, should_stop=None):
        self.started.set()
        while not self.release.is_set() and not (should_stop and should_stop()):
            self.release.wait(0.01)
        return ["the end"] * len(conversations)


def test_overload_is_a_503_and_health_says_busy(generator):
    from concurrent.futures import ThreadPoolExecutor

    from tunesmith.inference.server import ModelServer

    slow = _SlowGenerator(generator)
    with ModelServer(slow, "stories", max_queue=2, max_batch=1, batch_wait=0) as running:
        with ThreadPoolExecutor(4) as pool:
            first = [pool.submit(call, running.url + "/chat/completions", _chat(), None) for _ in range(2)]
            assert slow.started.wait(10)
            deadline = time.time() + 10
            while running.pending < 2 and time.time() < deadline:
                time.sleep(0.01)
            status, reply = call(running.url + "/chat/completions", _chat(), key=None)
            assert status == 503 and "busy" in reply["error"]["message"]
            assert call(running.url.replace("/v1", "/health"), key=None)[0] == 503
            slow.release.set()
            assert [f.result()[0] for f in first] == [200, 200]
        assert call(running.url.replace("/v1", "/health"), key=None) == (200, {"status": "ok", "pending": 0,
                                                                             "max_queue": 2})


def test_stopping_during_a_generation_answers_it_and_ends_the_worker(generator):
    from concurrent.futures import ThreadPoolExecutor

    from tunesmith.inference.server import ModelServer

    slow = _SlowGenerator(generator)
    running = ModelServer(slow, "stories", batch_wait=0).start()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(call, running.url + "/chat/completions", _chat(), None)
        assert slow.started.wait(10)
        started = time.time()
        running.stop()
        assert time.time() - started < 10 and not running.worker.thread.is_alive()
        assert waiting.result()[0] == 503


@pytest.mark.slow
def test_fifty_concurrent_requests_are_all_answered_correctly(generator):
    from concurrent.futures import ThreadPoolExecutor

    from tunesmith.inference.server import ModelServer

    with ModelServer(generator, "stories", batch_wait=0.05) as running:
        body = _chat(max_tokens=8)
        status, reference = call(running.url + "/chat/completions", body, key=None)
        assert status == 200
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda _: call(running.url + "/chat/completions", body, key=None), range(50)))
    assert [status for status, _ in results] == [200] * 50
    expected = reference["choices"][0]["message"]["content"]
    assert all(reply["choices"][0]["message"]["content"] == expected for _, reply in results)  # greedy, same prompt
