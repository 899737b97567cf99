"""Shared fixtures: paths to the offline material, and tiny random models built from configs."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

# Tests never reach the hub (these machines have no route to it); offline mode makes a hub id fail at once
# instead of after network time-outs. Set before transformers / huggingface_hub read it at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from tunesmith.reporting import Reporter

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
STORIES = SHARED / "models" / "stories260K"
EXAMPLES = ROOT / "examples"


def require_shared(path: Path = SHARED) -> Path:
    if not path.exists():
        pytest.skip(f"offline test material not found at {path} (the ../shared folder beside the repo)")
    return path


@pytest.fixture(scope="session", autouse=True)
def fp32_auto_precision():
    """`model.dtype: auto` trains under bf16 autocast on CPUs with AMX or AVX512-BF16 (`training_compute_dtype`); in
    tests (module- and session-scoped fixtures included) it means fp32 on every CPU, so exact logit comparisons hold
    whatever machine runs them. `amx_cpu` turns the rule back on for one test."""
    import tunesmith.models.loading as loading

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "native_bf16_cpu", lambda: None)
        yield


@pytest.fixture
def amx_cpu(monkeypatch):
    """This CPU taken for one with AMX-BF16 (bf16 autocast runs on any x86 CPU, only slower without AMX)."""
    import tunesmith.models.loading as loading

    monkeypatch.setattr(loading, "native_bf16_cpu", lambda: "amx_bf16")


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    return require_shared(STORIES)


def _tiny_config(arch: str, vocab: int):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256)
    raise ValueError(arch)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, stories_dir):
    """Save a randomly initialised model of `arch` with the stories260K tokenizer; returns its folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            tokenizer = AutoTokenizer.from_pretrained(stories_dir)
            torch.manual_seed(0)
            # Room for tokens a model-specific tokenizer class may add when it reloads this tokenizer.
            model = AutoModelForCausalLM.from_config(_tiny_config(arch, len(tokenizer) + 32))
            folder = tmp_path_factory.mktemp(f"tiny-{arch}")
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            made[arch] = folder
        return made[arch]

    return make


def speed_plan(device: str = "cpu", task: str = "sft", **switches):
    """The speed plan of a default run of `task` on `device`, with some pieces changed (SpeedPlan fields)."""
    from dataclasses import replace

    from tunesmith.config.loading import validate_config
    from tunesmith.speed.plan import resolve_speed_plan

    grpo = {"grpo": {"rewards": [{"name": "format", "pattern": "."}]}} if task == "grpo" else {}
    cfg = validate_config({"model": {"name_or_path": "unused"}, "data": {"train": [{"path": "unused.json"}]},
                           "task": task, **grpo})
    return replace(resolve_speed_plan(cfg, device, cpu_threads=1), **switches)


def run_log(run_dir) -> str:
    """A run's train.log: every line it told the user and every internal choice it made."""
    return (Path(run_dir) / "train.log").read_text(encoding="utf-8")


class RecordingReporter(Reporter):
    """A Reporter that keeps what library code told it: `.lines` holds (kind, text) in order, kind one of info,
    warning, status, progress; `.advanced` the total advanced per progress description."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []
        self.advanced: dict[str, int] = {}

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    @contextmanager
    def status(self, message: str):
        self.lines.append(("status", message))
        yield

    @contextmanager
    def progress(self, description: str, total):
        self.lines.append(("progress", description))
        self.advanced.setdefault(description, 0)

        def advance(n=1, detail=""):
            self.advanced[description] += n

        yield advance

    def text(self) -> str:
        return "\n".join(text for _, text in self.lines)


class PairwiseJudge:
    """An OpenAI-compatible endpoint that compares the two answers of PAIRWISE_PROMPT by a rule: `longer` prefers
    the longer answer (a judge with a real preference), `first` always says A (pure position bias), `mute` never
    gives a verdict; a reply graded alone gets "Score: 5". Records every prompt it saw."""

    def __init__(self, rule: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                seen.append(prompt)
                if "[Answer A]" not in prompt:  # a single reply graded alone
                    return self._reply("Score: 5")
                first = prompt.split("[Answer A]\n", 1)[1].split("\n\n[Answer B]", 1)[0]
                second = prompt.split("[Answer B]\n", 1)[1].rsplit("\n\nReply with", 1)[0]
                verdict = {"first": "Winner: A", "mute": "Both are fine.",
                           "longer": "Winner: " + ("A" if len(first) > len(second) else
                                                   "B" if len(second) > len(first) else "tie")}[rule]
                self._reply(verdict)

            def _reply(self, verdict):
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
