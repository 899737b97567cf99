"""An OpenAI-compatible HTTP server for a local model: /v1/chat/completions and /v1/models.

Standard library only (http.server), loopback by default. Concurrent requests are gathered into batches (up to
`max_batch`, waiting at most `batch_wait` seconds for company) and generated together: one forward pass per token
for the batch instead of one per request. What that buys depends on the hardware; benchmarks/serve_batching.py
measures it (docs/data.md). Streaming, tools and n > 1 are not supported and answered
with a 400 in the OpenAI error format.

An adapter set (inference/adapter_set.py) is served with its base once in memory: the request's `model` picks the
adapter (or the base, under its own name), /v1/models lists them, and requests for different adapters in one batch
are generated together (PEFT's mixed-adapter batch). `model: auto` is routed by the set's router
(inference/router.py) before it queues: the reply's `model` and `route` fields and its X-Tunesmith-Adapter header
name the adapter that answered. With an admin key, `POST /v1/adapters` {"name", "path",
"template"} loads another adapter and `DELETE /v1/adapters/NAME` drops one, on the generating thread between
batches; without one those routes are refused (403).

Limits, each answered in the OpenAI error format: a body over `max_body` bytes (413), a bad field (400 naming it), a
prompt that leaves no room in the model's context for `max_tokens` (400), more than `max_queue` requests waiting
(503 with Retry-After; /health says "busy"). Stopping ends a running generation at its next token.
"""

from __future__ import annotations

import copy
import hmac
import json
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from ..errors import ConfigError, TunesmithError
from .generation import MAX_NEW_TOKENS, Generator, SamplingOptions
from .router import AUTO

MAX_BODY = 4 * 2**20  # bytes of one request
MAX_STOP = 4  # stop strings, as OpenAI allows


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class _Job:
    messages: list[dict]
    options: SamplingOptions
    stop: list[str]
    adapter: str | None = None  # of an adapter set: the adapter this request asked for
    call: Callable[[], Any] | None = None  # instead of generating: run this on the generating thread (management)
    done: threading.Event = field(default_factory=threading.Event)
    text: str | None = None
    error: Exception | None = None


def adapter_set_of(generator):
    """The adapter set a generator serves, or None (a plain model, or a stand-in without the attribute)."""
    return getattr(generator, "adapter_set", None)


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

    def stop(self, timeout: float = 60) -> None:
        """Stop taking jobs, end the running generation at its next token, answer every waiting job with a 503."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            job.error = RequestError(503, "the server is shutting down", "server_error")
            job.done.set()

    def submit(self, job: _Job, timeout: float = 600) -> str:
        if self._stop.is_set():
            raise RequestError(503, "the server is shutting down", "server_error")
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
                if job.call is not None:  # adding or removing an adapter: never while a batch generates
                    self._call(job)
                    continue
                groups.setdefault(repr(job.options), []).append(job)
            for jobs in groups.values():
                self._run(jobs)

    def call(self, fn: Callable[[], Any], timeout: float = 600) -> None:
        """Run `fn` on the generating thread, between batches; its TunesmithError comes back as a RequestError."""
        self.submit(_Job([], SamplingOptions(), [], call=fn), timeout)

    def _call(self, job: _Job) -> None:
        try:
            job.call()
        except TunesmithError as exc:
            job.error = RequestError(getattr(exc, "http_status", 400), str(exc))
        except Exception as exc:  # noqa: BLE001 - answered to the caller as a 500
            job.error = RequestError(500, f"{type(exc).__name__}: {exc}", "server_error")
        job.done.set()

    def _run(self, jobs: list[_Job]) -> None:
        adapter_set = adapter_set_of(self.generator)
        extra = {}
        if adapter_set is not None:  # an adapter removed since the request was admitted: that request alone fails
            for job in [job for job in jobs if job.adapter is not None and not adapter_set.has(job.adapter)]:
                job.error = RequestError(404, f"the model '{job.adapter}' does not exist", "model_not_found")
                job.done.set()
                jobs.remove(job)
            if not jobs:
                return
            extra["adapters"] = [job.adapter for job in jobs]
        try:
            texts = self.generator.generate([job.messages for job in jobs], jobs[0].options,
                                            should_stop=self._stop.is_set, **extra)
            if self._stop.is_set():
                raise RequestError(503, "the server is shutting down", "server_error")
            self.batches.append(len(jobs))
            for job, text in zip(jobs, texts):
                for stop in job.stop:
                    if stop and stop in text:
                        text = text.split(stop, 1)[0]
                job.text = text
        except RequestError as exc:
            for job in jobs:
                job.error = exc
        except Exception as exc:  # reported to each waiting client as a 500
            for job in jobs:
                job.error = RequestError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
        for job in jobs:
            job.done.set()


def _content(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]
        parts = [part.get("text") for part in value if isinstance(part, dict) and part.get("type") == "text"]
        if all(isinstance(text, str) for text in parts):
            return "".join(parts)
    raise RequestError(400, f"messages[{index}].content must be a string or a list of text parts")


def _number(body: dict, keys: tuple[str, ...], default, whole: bool = False):
    """The first of `keys` present (not null) in the body, which must be a JSON number (a whole one if `whole`)."""
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        kind = int if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            raise RequestError(400, f"'{key}' must be a finite {'whole ' if whole else ''}number, got {value!r}")
        return value
    return default


def parse_chat_request(body: dict, default_max_tokens: int = 256,
                       max_tokens_limit: int = MAX_NEW_TOKENS) -> tuple[list[dict], SamplingOptions, list[str]]:
    """OpenAI chat-completion fields → (messages, sampling options, stop strings); a bad field is a 400 naming it."""
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
    if _number(body, ("n",), 1, whole=True) != 1:
        raise RequestError(400, "'n': only n=1 is supported")
    options = SamplingOptions(
        max_new_tokens=_number(body, ("max_completion_tokens", "max_tokens"), default_max_tokens, whole=True),
        temperature=_number(body, ("temperature",), 0.0), top_p=_number(body, ("top_p",), 1.0),
        seed=_number(body, ("seed",), None, whole=True))
    names = {"max_new_tokens": "max_tokens"}
    try:
        options.check(names)
    except ConfigError as exc:
        raise RequestError(400, f"'{exc.where}' {exc.message}") from None
    if options.max_new_tokens > max_tokens_limit:
        raise RequestError(400, f"'max_tokens' must be <= {max_tokens_limit} on this server, "
                                f"got {options.max_new_tokens}")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
        raise RequestError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings")
    return clean, options, stop


def model_context(generator: Generator) -> int | None:
    """Positions the model can attend over (None when its config does not say)."""
    config = getattr(generator.model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # connections the OS holds before accept(): a burst of clients is not reset


class ModelServer:
    """Serve `generator` as model `model_name`. Use as a context manager, or start() / stop().

    `max_requests` (for tests and one-off jobs) shuts the server down after that many chat completions. `max_queue`
    requests may wait or run at once; more are answered 503. `max_tokens` bounds a request's max_tokens (default: the
    model's context, at most MAX_NEW_TOKENS).
    """

    def __init__(self, generator: Generator, model_name: str, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, max_batch: int = 8, batch_wait: float = 0.02,
                 max_requests: int | None = None, log=None, max_queue: int = 64, max_body: int = MAX_BODY,
                 max_tokens: int | None = None, admin_key: str | None = None):
        self.generator, self.model_name, self.api_key = generator, model_name, api_key
        self.admin_key = admin_key  # adding / removing adapters of a set; None: those routes are refused
        self.worker = BatchingWorker(generator, max_batch, batch_wait)
        self.max_requests, self.served, self.log = max_requests, 0, log
        self.max_queue, self.max_body, self.context = max_queue, max_body, model_context(generator)
        self.max_tokens = max_tokens or min(self.context or MAX_NEW_TOKENS, MAX_NEW_TOKENS)
        self.pending = 0  # requests admitted and not yet answered
        self._lock = threading.Lock()
        # The generating thread owns the generator's tokenizer: a fast tokenizer is not safe to share between
        # threads (padding settings are per call but held in the shared object). Counting uses its own copy.
        self._counter, self._counter_lock = copy.deepcopy(generator.tokenizer), threading.Lock()
        self.httpd = _Server((host, port), self._handler_class())
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
        self.close()

    def close(self) -> None:
        """After serving: no new connections; the running generation ends at its next token, waiting ones get 503."""
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

    def _count(self, text: str) -> int:
        with self._counter_lock:
            return len(self._counter(text, add_special_tokens=False)["input_ids"])

    def _admit(self) -> None:
        with self._lock:
            if self.pending >= self.max_queue:
                raise RequestError(503, f"the server is busy ({self.pending} requests waiting or running); "
                                        f"retry later", "server_error")
            self.pending += 1

    def model_ids(self) -> list[str]:
        """What /v1/models lists: the model, or an adapter set's base and adapters."""
        adapter_set = adapter_set_of(self.generator)
        if adapter_set is None:
            return [self.model_name]
        return [*adapter_set.names, *([AUTO] if getattr(adapter_set, "router", None) is not None else [])]

    def _adapter(self, body: dict) -> str | None:
        """The adapter a request's `model` picks (None when not serving a set: the field is not checked there).
        Missing, or the set's own name: the set's default adapter."""
        adapter_set = adapter_set_of(self.generator)
        if adapter_set is None:
            return None
        model = body.get("model")
        if model is None or model == self.model_name:
            return AUTO if self.generator.routing else self.generator.adapter
        if model == AUTO:
            return AUTO
        if not isinstance(model, str) or not adapter_set.has(model):
            raise RequestError(404, f"the model {model!r} does not exist; this server has: "
                                    f"{', '.join(adapter_set.names)}", "model_not_found")
        return model

    def _completion(self, body: dict) -> dict:
        messages, options, stop = parse_chat_request(body, max_tokens_limit=self.max_tokens)
        adapter, route = self._adapter(body), None
        if adapter == AUTO:  # routed here, not on the generating thread: the prompt is counted with its template
            try:
                (adapter,), (messages,), (route,) = self.generator.resolve([messages], [AUTO])
            except ConfigError as exc:  # the set has no router
                raise RequestError(400, f"'model': {exc.message}") from None
        template = self.generator.template_for(adapter) if adapter is not None else self.generator.template
        prompt = template.render_prompt(messages)
        if self.context and len(prompt) > 64 * self.context:  # surely too long: no need to tokenise it all
            raise RequestError(400, f"the prompt is far longer than this model's context of {self.context} tokens")
        prompt_tokens = self._count(prompt)
        if self.context and prompt_tokens + options.max_new_tokens > self.context:
            raise RequestError(400, f"the prompt is {prompt_tokens} tokens; with max_tokens {options.max_new_tokens} "
                                    f"that is more than this model's context of {self.context} tokens")
        self._admit()
        try:
            text = self.worker.submit(_Job(messages, options, stop, adapter=adapter))
        finally:
            with self._lock:
                self.pending -= 1
        completion_tokens = self._count(text)
        routed = {"route": route.info()} if route is not None else {}
        return {**routed, "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": adapter or self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if completion_tokens >= options.max_new_tokens else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60  # seconds a client may take to send its request: a stalled one does not hold a thread

            def log_message(self, fmt: str, *args) -> None:
                if server.log:
                    server.log(f"{self.address_string()} {fmt % args}")

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    if isinstance(payload.get("route"), dict):  # a routed request: which adapter answered
                        self.send_header("X-Tunesmith-Adapter", payload["route"]["adapter"])
                    self.send_header("Content-Length", str(len(data)))
                    if status == 503:
                        self.send_header("Retry-After", "1")
                    if self.close_connection:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): not our error
                    self.close_connection = True
                    if server.log:
                        server.log(f"{self.address_string()} left before the reply was sent")

            def _error(self, error: RequestError) -> None:
                self._send(error.status, {"error": {"message": error.message, "type": error.kind, "code": None}})

            def _admin(self) -> bool:
                """Managing adapters needs the admin key (compared in constant time), which must be configured."""
                if server.admin_key is None:
                    self._error(RequestError(403, "adapter management is off: start the server with an admin key "
                                                  "(--admin-key)", "permission_error"))
                    return False
                given = self.headers.get("Authorization") or ""
                if not hmac.compare_digest(given.encode(), f"Bearer {server.admin_key}".encode()):
                    self._error(RequestError(401, "missing or wrong admin key", "authentication_error"))
                    return False
                return True

            def _manage(self, method: str) -> None:
                route = self.path.rstrip("/")
                adapter_set = adapter_set_of(server.generator)
                try:
                    if not self._admin():
                        return
                    if adapter_set is None:
                        raise RequestError(400, "this server serves one model, not an adapter set")
                    if method == "POST" and route in ("/v1/adapters", "/adapters"):
                        body = self._body()
                        name, path, template = body.get("name"), body.get("path"), body.get("template")
                        if not isinstance(name, str) or not isinstance(path, str) \
                                or not isinstance(template, (str, type(None))):
                            raise RequestError(400, "'name' and 'path' must be strings ('template' optional)")
                        server.worker.call(lambda: adapter_set.add(name, path, template))
                        self._send(200, {"id": name, "object": "model", "loaded": True})
                    elif method == "DELETE" and route.rsplit("/", 1)[0] in ("/v1/adapters", "/adapters"):
                        name = route.rsplit("/", 1)[1]
                        if not adapter_set.has(name) or name == adapter_set.base_name:
                            raise RequestError(404, f"no adapter '{name}' to remove", "model_not_found")
                        def remove():
                            adapter_set.remove(name)
                            if server.generator.adapter == name:  # requests naming no model go to the new default
                                server.generator.use(adapter_set.default)

                        server.worker.call(remove)
                        self._send(200, {"id": name, "object": "model", "deleted": True})
                    else:
                        raise RequestError(404, f"no route {method} {self.path}", "not_found")
                except RequestError as error:
                    self._error(error)

            def _authorized(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._error(RequestError(401, "missing or wrong API key", "authentication_error"))
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if not self._authorized():
                    return
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                                 "owned_by": "tunesmith"}
                                                                for name in server.model_ids()]})
                elif self.path.rstrip("/") in ("/health", "/v1/health"):
                    busy = server.pending >= server.max_queue
                    self._send(503 if busy else 200, {"status": "busy" if busy else "ok", "pending": server.pending,
                                                      "max_queue": server.max_queue})
                else:
                    self._error(RequestError(404, f"no route {self.path}", "not_found"))

            def do_DELETE(self) -> None:  # noqa: N802
                self._manage("DELETE")

            def do_POST(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/adapters"):
                    self._manage("POST")
                    return
                if not self._authorized():
                    return
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    self._error(RequestError(404, f"no route {self.path}", "not_found"))
                    return
                try:
                    body = self._body()
                    self._send(200, server._completion(body))
                except RequestError as error:
                    self._error(error)
                except Exception as exc:  # noqa: BLE001 - answered, never a dropped connection and a traceback
                    if server.log:
                        server.log(f"{self.address_string()} internal error: {type(exc).__name__}: {exc}")
                    self._error(RequestError(500, f"internal error: {type(exc).__name__}", "server_error"))
                finally:
                    server._count_request()

            def _body(self) -> dict:
                text = self.headers.get("Content-Length")
                if text is None or not text.strip().isdigit():
                    self.close_connection = True  # the body's end is unknown: this connection cannot go on
                    raise RequestError(411 if text is None else 400,
                                       "'Content-Length' must be given as a whole number of bytes")
                length = int(text)
                if length > server.max_body:
                    self.close_connection = True
                    raise RequestError(413, f"the body is {length} bytes; this server takes at most "
                                            f"{server.max_body}")
                raw = self.rfile.read(length)
                if len(raw) < length:
                    self.close_connection = True
                    raise RequestError(400, "the body ended before 'Content-Length' bytes")

                def refuse(constant: str):
                    raise ValueError(f"{constant} is not a JSON number")

                try:
                    body = json.loads(raw or b"{}", parse_constant=refuse)
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    raise RequestError(400, f"body is not valid JSON: {exc}") from None
                if not isinstance(body, dict):
                    raise RequestError(400, "body must be a JSON object")
                return body

        return Handler
