"""Teacher models for data construction, in a registry: `openai:MODEL` (any OpenAI-compatible chat endpoint)
and `local:PATH` (a Hugging Face model, run folder, GGUF or smollm2-135m-instruct, generated in batches).

The HTTP teacher uses the standard library (urllib) with a thread pool for concurrency, a requests-per-minute
limiter, and retries with exponential backoff and jitter on 429, 5xx and network errors (honouring Retry-After).
Base URL and key come from arguments or the environment: TUNESMITH_TEACHER_BASE_URL / OPENAI_BASE_URL and
TUNESMITH_TEACHER_API_KEY / OPENAI_API_KEY.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ...errors import ConfigError, TunesmithError

Conversation = list[dict]


@dataclass
class TeacherOptions:
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None


class TeacherError(TunesmithError):
    """The teacher endpoint refused or kept failing."""


class Teacher:
    name = "?"

    def complete(self, conversations: list[Conversation], options: TeacherOptions) -> list[str]:
        raise NotImplementedError


class RateLimiter:
    """At most `per_minute` calls per minute, spaced evenly (thread-safe): each caller reserves the next free slot
    under the lock and sleeps outside it, so concurrent workers queue up instead of bursting."""

    def __init__(self, per_minute: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next_time = 0.0
        self.lock = threading.Lock()
        self.clock, self.sleep = clock, sleep

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = self.clock()
            start = max(now, self.next_time)
            self.next_time = start + self.interval
        if start > now:
            self.sleep(start - now)


class OpenAITeacher(Teacher):
    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 concurrency: int = 4, requests_per_minute: float | None = None, max_retries: int = 5,
                 timeout: float = 120.0, backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        self.model = model
        self.base_url = (base_url or os.environ.get("TUNESMITH_TEACHER_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
                         or "https://api.openai.com/v1").rstrip("/")
        self.api_key = api_key or os.environ.get("TUNESMITH_TEACHER_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.name = f"openai:{model}@{self.base_url}"
        self.concurrency, self.max_retries, self.timeout, self.backoff = concurrency, max_retries, timeout, backoff
        self.limiter = RateLimiter(requests_per_minute, sleep=sleep)
        self.sleep = sleep
        self.retries = 0  # how many retries were needed so far

    def complete(self, conversations: list[Conversation], options: TeacherOptions) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(lambda messages: self._one(messages, options), conversations))

    def _one(self, messages: Conversation, options: TeacherOptions) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": options.max_tokens,
                "temperature": options.temperature, "top_p": options.top_p}
        if options.seed is not None:
            body["seed"] = options.seed
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            request = urllib.request.Request(f"{self.base_url}/chat/completions", data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read())
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as exc:
                detail = _error_text(exc)
                if exc.code != 429 and exc.code < 500:
                    raise TeacherError(f"the teacher endpoint refused the request (HTTP {exc.code}): {detail}",
                                       where=self.base_url,
                                       hint="check the model name and the API key (TUNESMITH_TEACHER_API_KEY)") \
                        from None
                # the server's Retry-After is obeyed as given; our own backoff gets jitter so that
                # concurrent workers do not retry in lockstep
                delay = _retry_after(exc) or self._backoff(attempt)
                problem = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                delay, problem = self._backoff(attempt), f"{type(exc).__name__}: {exc}"
            except (KeyError, IndexError, json.JSONDecodeError) as exc:
                raise TeacherError(f"the teacher's reply is not a chat completion ({exc})", where=self.base_url) \
                    from None
            if attempt == self.max_retries:
                break
            self.retries += 1
            self.sleep(delay)
        raise TeacherError(f"the teacher endpoint kept failing after {self.max_retries + 1} attempts ({problem})",
                           where=self.base_url, hint="check that the server is up; the output so far is kept and "
                                                     "the command resumes where it stopped")

    def _backoff(self, attempt: int) -> float:
        return self.backoff * 2 ** attempt * (0.5 + random.random())


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read() or b"{}")
        return str(payload.get("error", {}).get("message") or payload)[:300]
    except Exception:  # any unreadable body: the status says enough
        return exc.reason or ""


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


class LocalTeacher(Teacher):
    def __init__(self, model: str, *, batch_size: int = 8, dtype: str = "auto"):
        from ...inference.generation import Generator
        from ...models.loading import load_for_inference

        self.name = f"local:{model}"
        self.batch_size = batch_size
        self.generator = Generator(load_for_inference(model, dtype=dtype))

    def complete(self, conversations: list[Conversation], options: TeacherOptions) -> list[str]:
        from ...inference.generation import SamplingOptions

        sampling = SamplingOptions(max_new_tokens=options.max_tokens, temperature=options.temperature,
                                   top_p=options.top_p, seed=options.seed)
        out: list[str] = []
        for start in range(0, len(conversations), self.batch_size):
            out += self.generator.generate(conversations[start:start + self.batch_size], sampling)
        return out


TEACHERS: dict[str, type[Teacher]] = {"openai": OpenAITeacher, "local": LocalTeacher}


def make_teacher(spec: str, **options) -> Teacher:
    """`openai:MODEL` or `local:PATH`; options go to the teacher's constructor (unknown ones are dropped)."""
    kind, sep, target = spec.partition(":")
    if not sep or kind not in TEACHERS or not target:
        raise ConfigError(f"unknown teacher '{spec}'", where="--teacher",
                          hint="use openai:MODEL (any OpenAI-compatible endpoint; base URL in "
                               "TUNESMITH_TEACHER_BASE_URL) or local:PATH (a local model)")
    cls = TEACHERS[kind]
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(target, **{k: v for k, v in options.items() if k in accepted and v is not None})
