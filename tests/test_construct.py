"""Self-Instruct and augmentation through a real OpenAI-compatible server on 127.0.0.1 (tunesmith's own,
serving stories260K), plus the teacher's retry behaviour against a real flaky HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunesmith.data.construct import (AugmentConfig, SelfInstructConfig, TeacherError, TeacherOptions,
                                      augment_file, make_teacher, read_seed_tasks, self_instruct)
from tunesmith.data.construct.augment import variant_problem
from tunesmith.data.construct.teachers import RateLimiter, Teacher
from tunesmith.data.construct.self_instruct import instruction_problem, parse_tasks
from tunesmith.data.doctor.text import units

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def served(stories_dir):
    from tunesmith.inference.generation import Generator
    from tunesmith.inference.server import ModelServer
    from tunesmith.models.loading import load_for_inference

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 260K-parameter model gains nothing from threads, and they contend on shared CPUs
    server = ModelServer(Generator(load_for_inference(str(stories_dir))), "stories", max_requests=200)
    with server:
        yield server
    torch.set_num_threads(threads)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_self_instruct_over_http_resumes(served, tmp_path):
    teacher = make_teacher("openai:stories", base_url=served.url, concurrency=2)
    seeds = read_seed_tasks(str(EXAMPLES / "seed_tasks_en.jsonl"))
    out = tmp_path / "gen.jsonl"
    cfg = SelfInstructConfig(num=2, batch_size=2, instruction_options=TeacherOptions(max_tokens=24, temperature=1.0,
                                                                                     seed=3),
                             answer_options=TeacherOptions(max_tokens=20, temperature=0.7))
    first = self_instruct(teacher, seeds, str(out), cfg)
    assert first.total == 2 and first.written == 2
    before = served.served
    cfg.num = 3
    second = self_instruct(teacher, seeds, str(out), cfg)
    records = read_jsonl(out)
    assert second.total == 3 and second.written == 1 and len(records) == 3  # resumed, not restarted
    assert served.served > before
    seed_units = [units(s["instruction"]) for s in seeds]
    for record in records:
        assert record["instruction"] and record["output"]
        assert record["provenance"]["method"] == "self-instruct"
        assert record["provenance"]["teacher"].startswith("openai:stories@http://127.0.0.1")
        assert instruction_problem(record["instruction"], seed_units, cfg)[0] == ""


def test_augment_paraphrase_and_backtranslation_over_http(served, tmp_path):
    teacher = make_teacher("openai:stories", base_url=served.url)
    source = tmp_path / "src.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(EXAMPLES / "seed_tasks_en.jsonl")[:3]))
    out = tmp_path / "aug.jsonl"
    cfg = AugmentConfig(methods=("paraphrase", "backtranslate"), field="instruction", max_rouge=1.01,
                        options=TeacherOptions(max_tokens=24, temperature=0.8, seed=1))
    written, rejected = augment_file(teacher, str(source), str(out), cfg)
    records = read_jsonl(out)
    assert written == len(records) and written + sum(rejected.values()) == 6
    assert {r["provenance"]["method"] for r in records} <= {"paraphrase", "backtranslate"}
    assert all(r["provenance"]["source_line"] in (1, 2, 3) for r in records)
    assert written > 0
    again, _ = augment_file(teacher, str(source), str(out), cfg)  # only the rejected pairs are tried again
    assert len(read_jsonl(out)) == written + again and again <= sum(rejected.values())


def test_filters():
    assert parse_tasks("Write a poem.\nTask 5: Name a fruit.\n3. Sort a list\n\n- Explain tides") == [
        "Write a poem.", "Name a fruit.", "Sort a list", "Explain tides"]
    cfg = SelfInstructConfig()
    pool = [units("Write a poem about the sea.")]
    assert instruction_problem("Write a poem about the sea!", pool, cfg)[0] == "similar"
    assert instruction_problem("Describe this picture of a cat.", pool, cfg)[0] == "unsuitable"
    assert instruction_problem("Hi", pool, cfg)[0] == "length"
    assert instruction_problem("Explain how vaccines train the immune system.", pool, cfg)[0] == ""
    cfg_zh = SelfInstructConfig(language="zh")
    assert instruction_problem("Explain how vaccines train the immune system.", pool, cfg_zh)[0] == "language"
    acfg = AugmentConfig()
    assert variant_problem("解释什么是机器学习。", "解释什么是机器学习。", acfg) == "unchanged"
    assert variant_problem("解释什么是机器学习。", "Explain machine learning.", acfg) == "language"
    assert variant_problem("解释什么是机器学习。", "请说明机器学习的含义。", acfg) == ""


class _Flaky(BaseHTTPRequestHandler):
    failures_left = 2
    busy_left = 1
    calls = 0

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        type(self).calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        headers = {}
        if self.path.endswith("/bad/chat/completions"):
            status, payload = 400, {"error": {"message": "unknown model"}}
        elif self.path.endswith("/busy/chat/completions") and type(self).busy_left > 0:
            type(self).busy_left -= 1
            status, payload, headers = 429, {"error": {"message": "rate limited"}}, {"Retry-After": "7"}
        elif self.path.endswith("/busy/chat/completions"):
            status, payload = 200, {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}
        elif type(self).failures_left > 0:
            type(self).failures_left -= 1
            status, payload = 503, {"error": {"message": "overloaded"}}
        else:
            status, payload = 200, {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def flaky_url():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_teacher_retries_with_backoff_then_gives_clear_errors(flaky_url):
    if True:
        base = flaky_url
        sleeps = []
        teacher = make_teacher("openai:m", base_url=base + "/v1", backoff=0.01, sleep=sleeps.append)
        assert teacher.complete([[{"role": "user", "content": "hi"}]], TeacherOptions()) == ["ok"]
        assert teacher.retries == 2 and len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.5
        with pytest.raises(TeacherError, match="HTTP 400.*unknown model"):
            make_teacher("openai:m", base_url=base + "/bad").complete([[{"role": "user", "content": "x"}]],
                                                                      TeacherOptions())
        _Flaky.failures_left = 10
        with pytest.raises(TeacherError, match="kept failing after 3 attempts"):
            make_teacher("openai:m", base_url=base + "/v1", max_retries=2, backoff=0.001).complete(
                [[{"role": "user", "content": "x"}]], TeacherOptions())


def test_teacher_obeys_retry_after_on_429(flaky_url):
    sleeps = []
    teacher = make_teacher("openai:m", base_url=flaky_url + "/busy", sleep=sleeps.append)
    assert teacher.complete([[{"role": "user", "content": "hi"}]], TeacherOptions()) == ["ok"]
    assert sleeps == [7.0] and teacher.retries == 1


def test_rate_limiter_spaces_requests(flaky_url):
    now, slept = [100.0], []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(120, clock=lambda: now[0], sleep=sleep)  # one call every 0.5 s
    for _ in range(4):
        limiter.wait()
    assert slept == [0.5, 0.5, 0.5]
    # Over HTTP with 4 parallel workers at 6 requests a minute: each request reserves the next 10 s slot.
    waits = []
    teacher = make_teacher("openai:m", base_url=flaky_url + "/busy", concurrency=4, requests_per_minute=6,
                           sleep=waits.append)
    _Flaky.busy_left = 0
    assert teacher.complete([[{"role": "user", "content": str(n)}] for n in range(4)], TeacherOptions()) == ["ok"] * 4
    assert len(waits) == 3 and all(abs(w - 10 * k) < 5 for w, k in zip(sorted(waits), (1, 2, 3)))


class _ScriptTeacher(Teacher):
    """A teacher that translates from a phrase book and records what it was asked (the augmentation logic)."""

    name = "script"
    book = {"解释什么是机器学习。": "Explain what machine learning is.",
            "Explain what machine learning is.": "请说明机器学习是什么。",
            "Why is the sky blue?": "天空为什么是蓝色的？",
            "天空为什么是蓝色的？": "What makes the sky look blue?",
            "机器学习让计算机从数据中学习规律。": "Machine learning lets computers learn patterns from data.",
            "Machine learning lets computers learn patterns from data.": "机器学习使计算机能够从数据里学到规律。"}

    def __init__(self):
        self.prompts = []

    def complete(self, conversations, options):
        texts = [c[-1]["content"] for c in conversations]
        self.prompts += texts
        return [self.book.get(text.split("\n\n", 1)[1], "?") for text in texts]


def test_backtranslation_goes_through_the_other_language_and_records_the_pivot(tmp_path):
    source = tmp_path / "src.jsonl"
    records = [{"instruction": "解释什么是机器学习。", "input": "", "output": "机器学习让计算机从数据中学习规律。", "id": 1},
               {"instruction": "Why is the sky blue?", "input": "", "output": "Light scattering.", "id": 2},
               {"instruction": "Unknown text here.", "input": "", "output": "x", "id": 3}]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    teacher = _ScriptTeacher()
    out = tmp_path / "bt.jsonl"
    written, rejected = augment_file(teacher, str(source), str(out), AugmentConfig(methods=("backtranslate",)))
    rows = read_jsonl(out)
    assert written == 2 and rejected == {"instruction:pivot": 1}  # the phrase book has no "Unknown text here."
    zh, en = rows
    assert zh["instruction"] == "请说明机器学习是什么。" and zh["output"] == records[0]["output"] and zh["id"] == 1
    assert zh["provenance"] | {"created": None} == {
        "method": "backtranslate", "teacher": "script", "created": None, "tool": zh["provenance"]["tool"],
        "field": "instruction", "source": str(source), "source_line": 1,
        "pivot": {"instruction": "Explain what machine learning is."}}
    assert en["instruction"] == "What makes the sky look blue?" and en["provenance"]["pivot"] == {
        "instruction": "天空为什么是蓝色的？"}
    assert "into English" in teacher.prompts[0] and "翻译成中文" in teacher.prompts[1]  # zh → en first
    both = tmp_path / "both.jsonl"
    augment_file(_ScriptTeacher(), str(source), str(both), AugmentConfig(methods=("backtranslate",), field="both"))
    first = read_jsonl(both)[0]
    assert first["output"] == "机器学习使计算机能够从数据里学到规律。" and set(first["provenance"]["pivot"]) == {
        "instruction", "output"}


def test_local_teacher_generates_in_batches(stories_dir):
    teacher = make_teacher(f"local:{stories_dir}", batch_size=2)
    replies = teacher.complete([[{"role": "user", "content": f"Tell a story about {w}."}] for w in
                                ("a cat", "a dog", "the sea")], TeacherOptions(max_tokens=6, temperature=0.0))
    assert len(replies) == 3 and all(isinstance(r, str) and r for r in replies)
    assert teacher.name == f"local:{stories_dir}"


@pytest.mark.slow
def test_cli_generate_against_served_model(served, tmp_path, capsys):
    from tunesmith.cli.main import main

    out = tmp_path / "g.jsonl"
    code = main(["data", "generate", "--seeds", str(EXAMPLES / "seed_tasks_zh.jsonl"), "--out", str(out),
                 "--num", "2", "--teacher", "openai:stories", "--base-url", served.url, "--max-tokens", "24",
                 "--max-rounds", "6"])
    records = read_jsonl(out) if out.exists() else []
    assert (code == 0 and len(records) == 2) or (code == 1 and "stopped short" in capsys.readouterr().err)
    assert main(["data", "generate", "--seeds", str(EXAMPLES / "seed_tasks_zh.jsonl"), "--out", str(out),
                 "--teacher", "nonsense"]) == 2
    augmented = tmp_path / "a.jsonl"
    assert main(["data", "augment", str(EXAMPLES / "seed_tasks_en.jsonl"), "--out", str(augmented), "--teacher",
                 "openai:stories", "--base-url", served.url, "--max-tokens", "16", "--max-rouge", "1.01"]) == 0
    rows = read_jsonl(augmented)
    assert rows and all(r["provenance"]["method"] == "paraphrase" for r in rows)
    assert "variants appended" in capsys.readouterr().err
