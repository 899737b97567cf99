"""`tunesmith serve`'s OpenAI-compatible server, over real HTTP on 127.0.0.1, with stories260K."""

from __future__ import annotations

import json
import threading
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
