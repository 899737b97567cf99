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
from tunesmith.data.construct.self_instruct import instruction_problem, parse_tasks
from tunesmith.data.doctor.text import units

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def served(stories_dir):
    from tunesmith.inference.generation import Generator
    from tunesmith.inference.server import ModelServer
    from tunesmith.models.loading import load_for_inference

    server = ModelServer(Generator(load_for_inference(str(stories_dir))), "stories", max_requests=200)
    with server:
        yield server


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
    calls = 0

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        type(self).calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/bad/chat/completions"):
            status, payload = 400, {"error": {"message": "unknown model"}}
        elif type(self).failures_left > 0:
            type(self).failures_left -= 1
            status, payload = 503, {"error": {"message": "overloaded"}}
        else:
            status, payload = 200, {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_teacher_retries_with_backoff_then_gives_clear_errors():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
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
    finally:
        httpd.shutdown()
        httpd.server_close()


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
