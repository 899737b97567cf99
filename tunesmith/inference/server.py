"""An OpenAI-compatible HTTP server for a local model: /v1/chat/completions and /v1/models.

Standard library only (http.server), loopback by default. Concurrent requests are gathered into batches (up to
`max_batch`, waiting at most `batch_wait` seconds for company) and generated together: one forward pass per token
for the batch instead of one per request. What that buys depends on the hardware; benchmarks/serve_batching.py
measures it (docs/data.md). Streaming, tools and n > 1 are not supported and answered
with a 400 in the OpenAI error format.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .generation import Generator, SamplingOptions


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class _Job:
    messages: list[dict]
    options: SamplingOptions
    stop: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    text: str | None = None
    error: Exception | None = None


class BatchingWorker:
    """One thread owns the model; requests queue up and are generated in batches of equal sampling options."""

    def __init__(self, generator: Generator, max_batch: int = 8, batch_wait: float = 0.02):
        self.generator, self.max_batch, self.batch_wait = generator, max_batch, batch_wait
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tunesmith-generate", daemon=True)
        self.batches: list[int] = []  # sizes of the batches generated, for inspection

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def submit(self, job: _Job, timeout: float = 600) -> str:
        self.jobs.put(job)
        if not job.done.wait(timeout):
            raise RequestError(504, "generation timed out", "server_error")
        if job.error is not None:
            raise job.error
        return job.text or ""

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self.jobs.get(timeout=left))
                except queue.Empty:
                    break
            groups: dict[str, list[_Job]] = {}
            for job in batch:
                groups.setdefault(repr(job.options), []).append(job)
            for jobs in groups.values():
                self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            texts = self.generator.generate([job.messages for job in jobs], jobs[0].options)
            self.batches.append(len(jobs))
            for job, text in zip(jobs, texts):
                for stop in job.stop:
                    if stop and stop in text:
                        text = text.split(stop, 1)[0]
                job.text = text
        except Exception as exc:  # reported to each waiting client as a 500
            for job in jobs:
                job.error = RequestError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
        for job in jobs:
            job.done.set()


def _content(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") for part in value if isinstance(part, dict) and part.get("type") == "text")
    raise RequestError(400, f"messages[{index}].content must be a string or a list of text parts")


def parse_chat_request(body: dict, default_max_tokens: int = 256) -> tuple[list[dict], SamplingOptions, list[str]]:
    """OpenAI chat-completion fields → (messages, sampling options, stop strings); bad fields raise a 400."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise RequestError(400, f"messages[{index}] needs a role of system, user or assistant")
        clean.append({"role": message["role"], "content": _content(message.get("content"), index)})
    if clean[-1]["role"] != "user":
        raise RequestError(400, "the last message must come from the user")
    if body.get("stream"):
        raise RequestError(400, "streaming is not supported by this server; send stream=false")
    if body.get("n", 1) != 1:
        raise RequestError(400, "only n=1 is supported")
    try:
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens)
        temperature = float(body.get("temperature", 0.0) if body.get("temperature") is not None else 0.0)
        top_p = float(body.get("top_p", 1.0) if body.get("top_p") is not None else 1.0)
        seed = int(body["seed"]) if body.get("seed") is not None else None
    except (TypeError, ValueError) as exc:
        raise RequestError(400, f"bad sampling parameter: {exc}") from None
    if max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise RequestError(400, "max_tokens must be >= 1, temperature >= 0 and 0 < top_p <= 1")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]
    return clean, SamplingOptions(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed), stop


class ModelServer:
    """Serve `generator` as model `model_name`. Use as a context manager, or start() / stop().

    `max_requests` (for tests and one-off jobs) shuts the server down after that many chat completions.
    """

    def __init__(self, generator: Generator, model_name: str, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, max_batch: int = 8, batch_wait: float = 0.02,
                 max_requests: int | None = None, log=None):
        self.generator, self.model_name, self.api_key = generator, model_name, api_key
        self.worker = BatchingWorker(generator, max_batch, batch_wait)
        self.max_requests, self.served, self.log = max_requests, 0, log
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.finished = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ModelServer:
        self.worker.start()
        self._thread = threading.Thread(target=self.serve_forever, name="tunesmith-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        if not self.worker.thread.is_alive():
            self.worker.start()
        try:
            self.httpd.serve_forever(poll_interval=0.1)
        finally:
            self.finished.set()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.worker.stop()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _count_request(self) -> None:
        with self._lock:
            self.served += 1
            if self.max_requests is not None and self.served >= self.max_requests:
                threading.Thread(target=self.httpd.shutdown, daemon=True).start()

    def _completion(self, body: dict) -> dict:
        messages, options, stop = parse_chat_request(body)
        text = self.worker.submit(_Job(messages, options, stop))
        tokenizer = self.generator.tokenizer
        prompt_tokens = len(tokenizer(self.generator.template.render_prompt(messages),
                                      add_special_tokens=False)["input_ids"])
        completion_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if completion_tokens >= options.max_new_tokens else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args) -> None:
                if server.log:
                    server.log(f"{self.address_string()} {fmt % args}")

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): not our error
                    self.close_connection = True
                    if server.log:
                        server.log(f"{self.address_string()} left before the reply was sent")

            def _error(self, error: RequestError) -> None:
                self._send(error.status, {"error": {"message": error.message, "type": error.kind, "code": None}})

            def _authorized(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._error(RequestError(401, "missing or wrong API key", "authentication_error"))
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if not self._authorized():
                    return
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model",
                                                                 "created": 0, "owned_by": "tunesmith"}]})
                elif self.path.rstrip("/") in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                else:
                    self._error(RequestError(404, f"no route {self.path}", "not_found"))

            def do_POST(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    self._error(RequestError(404, f"no route {self.path}", "not_found"))
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    try:
                        body = json.loads(self.rfile.read(length) or b"{}")
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        raise RequestError(400, f"body is not valid JSON: {exc}") from None
                    if not isinstance(body, dict):
                        raise RequestError(400, "body must be a JSON object")
                    self._send(200, server._completion(body))
                except RequestError as error:
                    self._error(error)
                finally:
                    server._count_request()

        return Handler
