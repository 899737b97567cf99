"""Routing `auto` requests in an adapter set (tunesmith/inference/router.py): prefix, rules, fallback, classifier,
the manifest's checks, serve/generate/chat with `auto`, and `tunesmith eval SET.yaml --router-data`."""

from __future__ import annotations

import json
import random

import pytest

from .test_adapter_set import _call, _make_lora, _write, generate_records

ROUTER = {"prefix": "strip",
          "rules": [{"adapter": "beta", "keywords": ["cat", "dog"]},
                    {"adapter": "alpha", "regex": r"^\s*select\b"},
                    {"adapter": "base", "keywords": ["cat"]}],  # never reached: rule 1 takes "cat" first
          "fallback": "base"}


@pytest.fixture(scope="module")
def routed(tmp_path_factory, tiny_model_factory):
    import torch

    torch.set_num_threads(1)
    base = tiny_model_factory("llama")
    root = tmp_path_factory.mktemp("routed")
    _make_lora(base, root / "a", 1)
    _make_lora(base, root / "b", 2)
    spec = {"base": str(base), "template": "alpaca_en", "adapters": {"alpha": "a", "beta": "b"}}
    manifest = _write(root / "set.yaml", {**spec, "router": ROUTER})
    return {"base": base, "root": root, "spec": spec, "manifest": manifest}


@pytest.fixture(scope="module")
def routed_set(routed):
    from tunesmith.inference.adapter_set import load_adapter_set

    return load_adapter_set(routed["manifest"])


def _user(text):
    return [{"role": "user", "content": text}]


def _router(manifest):
    from tunesmith.api import load_router

    return load_router(manifest)


def test_prefix_rules_and_fallback_route_as_configured(routed, tmp_path):
    router = _router(routed["manifest"])
    cases = {"[beta] tell me a story": ("beta", "prefix", "tell me a story"),
             "ALPHA: a cat sat": ("alpha", "prefix", "a cat sat"),  # the prefix wins over a keyword; any case
             "[gamma] a dog ran": ("beta", "rule 1", "[gamma] a dog ran"),  # no adapter gamma: plain text
             "the cat sat": ("beta", "rule 1", "the cat sat"),
             "concatenate these": ("base", "fallback", "concatenate these"),  # keywords are whole words
             "  SELECT name FROM t": ("alpha", "rule 2", "  SELECT name FROM t"),
             "hello there": ("base", "fallback", "hello there")}
    for text, (adapter, by, seen) in cases.items():
        route = router.route([{"role": "system", "content": "[beta] be brief"}, *_user(text)])
        assert (route.adapter, route.by, route.messages[-1]["content"]) == (adapter, by, seen), text
        assert route.messages[0]["content"] == "[beta] be brief"  # only the last user message is read
    keep = _write(tmp_path / "keep.yaml", {**routed["spec"], "router": {"prefix": "keep"}})
    (tmp_path / "a").symlink_to(routed["root"] / "a")
    (tmp_path / "b").symlink_to(routed["root"] / "b")
    route = _router(keep).route(_user("[beta] hi"))
    assert (route.adapter, route.messages[-1]["content"]) == ("beta", "[beta] hi")
    route = _router(keep).route(_user("no prefix"))
    assert (route.adapter, route.by) == ("alpha", "fallback")  # no fallback given: the set's default


def test_router_manifest_errors_name_file_and_field(routed, tmp_path):
    from tunesmith.errors import TunesmithError
    from tunesmith.inference.adapter_set import read_manifest, remove_from_manifest

    for name in ("a", "b"):
        (tmp_path / name).symlink_to(routed["root"] / name)
    run = tmp_path / "not_a_classifier"
    run.mkdir()
    labels = tmp_path / "wrong_labels"
    labels.mkdir()
    (labels / "tunesmith_run.json").write_text(json.dumps({"task": "classification", "artifact": "full",
                                                            "base_model": {}, "label_names": ["alpha", "sql"]}))
    bad = {"router.colour": {"colour": 1},
           "router.rules.0.adapter": {"rules": [{"adapter": "gamma", "keywords": ["x"]}]},
           "router.rules.1.regex": {"rules": [{"adapter": "beta", "regex": "ok"}, {"adapter": "beta", "regex": "(("}]},
           "router.rules.0.keywords": {"rules": [{"adapter": "beta", "keywords": []}]},
           "router.prefix": {"prefix": "drop"},
           "router.fallback": {"prefix": "strip", "fallback": "gamma"},
           "router.min_score": {"prefix": "strip", "min_score": 2},
           "router.classifier": {"classifier": "nowhere"}}
    for field, router in bad.items():
        manifest = _write(tmp_path / "m.yaml", {**routed["spec"], "router": router})
        with pytest.raises(TunesmithError) as info:
            read_manifest(manifest)
        assert f"{manifest}: {field}" in str(info.value), (field, str(info.value))
    for folder, words in ((run, "not a tunesmith classification run"), (labels, "label 'sql'")):
        manifest = _write(tmp_path / "m.yaml", {**routed["spec"], "router": {"classifier": str(folder)}})
        with pytest.raises(TunesmithError, match=words):
            read_manifest(manifest)
    auto = _write(tmp_path / "m.yaml", {**routed["spec"], "adapters": {"auto": "a"}})
    with pytest.raises(TunesmithError, match="kept for routing"):
        read_manifest(auto)
    manifest = _write(tmp_path / "m.yaml", {**routed["spec"], "router": {"rules": ROUTER["rules"][:1]}})
    with pytest.raises(TunesmithError) as info:  # the router still sends requests to beta
        remove_from_manifest(manifest, "beta")
    assert "router.rules.0.adapter" in str(info.value)


def test_serve_model_auto_answers_as_the_routed_adapter(routed_set):
    import urllib.request

    from tunesmith.inference.generation import Generator
    from tunesmith.inference.server import ModelServer

    generator = Generator(routed_set.loaded(), routed_set)
    with ModelServer(generator, "tiny-set", batch_wait=0.2) as server:
        def ask(model, text):
            body = {"model": model, "messages": _user(text), "max_tokens": 6}
            return _call(server.url + "/chat/completions", body)[1]

        assert [m["id"] for m in _call(server.url + "/models")[1]["data"]] == ["base", "alpha", "beta", "auto"]
        for text, adapter, by, plain in (("[beta] Once upon a time", "beta", "prefix", "Once upon a time"),
                                         ("The cat sat", "beta", "rule 1", "The cat sat"),
                                         ("Lily went home", "base", "fallback", "Lily went home")):
            routed_reply, named = ask("auto", text), ask(adapter, plain)
            assert routed_reply["route"] == {"adapter": adapter, "by": by} and routed_reply["model"] == adapter
            assert routed_reply["choices"][0]["message"]["content"] == named["choices"][0]["message"]["content"]
        request = urllib.request.Request(server.url + "/chat/completions", method="POST",
                                         data=json.dumps({"model": "auto", "messages": _user("a dog"),
                                                          "max_tokens": 4}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            assert reply.headers["X-Tunesmith-Adapter"] == "beta"
        generator.use("auto")  # `serve --adapter auto`: requests naming no model are routed too
        assert ask(None, "[alpha] hi")["route"]["adapter"] == "alpha"


def test_generate_and_chat_report_the_routed_adapter(routed, routed_set, tmp_path, capsys):
    from rich.console import Console

    from tunesmith.cli.chat import chat_loop
    from tunesmith.cli.main import main
    from tunesmith.inference.generation import Generator, SamplingOptions

    records = [{"prompt": "[alpha] Once upon a time"}, {"prompt": "The dog ran", "adapter": "auto"},
               {"prompt": "Lily saw", "adapter": "alpha"}]
    rows, prompts, out = generate_records(routed["manifest"], records, tmp_path, "--max-new-tokens", "5",
                                          "--adapter", "auto")
    assert [(r.get("routed_adapter"), r.get("routed_by")) for r in rows] == [("alpha", "prefix"),
                                                                            ("beta", "rule 1"), (None, None)]
    generator = Generator(routed_set.loaded(), routed_set)
    options = SamplingOptions(max_new_tokens=5)
    expected = [generator.generate([_user(text)], options, adapters=[name])[0]
                for text, name in (("Once upon a time", "alpha"), ("The dog ran", "beta"), ("Lily saw", "alpha"))]
    assert [r["response"] for r in rows] == expected

    lines = iter(["/adapter auto", "[beta] Once upon a time", "/adapter", "/exit"])
    console = Console(record=True, width=200)
    chat_loop(generator, SamplingOptions(max_new_tokens=3), console=console, read=lambda _: next(lines))
    text = console.export_text()
    assert "(routed to beta by prefix)" in text and "adapters: base, alpha, beta, auto (now: auto)" in text

    plain = _write(tmp_path / "plain.yaml", routed["spec"] | {"adapters": {"alpha": str(routed["root"] / "a")}})
    assert main(["generate", str(plain), "--prompts", str(prompts), "--out", str(out), "--adapter", "auto"]) == 2
    assert "router" in capsys.readouterr().err


WORDS = {"alpha": ["story", "once", "princess", "dragon"], "beta": ["query", "table", "rows", "column"]}
FILLER = ["the", "a", "write", "me", "about", "please", "with", "and"]


def _prompts(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "alpha" if i % 2 == 0 else "beta"
        words = rng.sample(FILLER, 3) + [rng.choice(WORDS[label])]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def test_classifier_router_accuracy_is_the_hand_count(routed, tmp_path, capsys):
    import csv

    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from tunesmith.cli.main import main
    from tunesmith.config.loading import validate_config
    from tunesmith.recipes import train
    from tunesmith.tasks.classification import load_classifier

    encoder = tmp_path / "encoder"  # a tiny random BERT (as MiniLM is saved: a bare BertModel) and a word vocab
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS["alpha"], *WORDS["beta"], *FILLER]
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(encoder)
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(encoder)
    with open(tmp_path / "train.csv", "w", newline="") as handle:  # labelled prompts: the labels are adapter names
        csv.writer(handle).writerows([("text", "label"), *_prompts(64, 0)])
    train(validate_config({
        "task": "classification", "model": {"name_or_path": str(encoder)}, "method": {"name": "full"},
        "data": {"train": [{"path": str(tmp_path / "train.csv")}], "max_length": 16},
        "training": {"output_dir": str(tmp_path / "router_run"), "max_steps": 16, "batch_size": 16,
                     "learning_rate": 1e-2, "logging_steps": 4, "save_steps": 100, "warmup_ratio": 0.0,
                     "tensorboard": False, "lr_scheduler": "constant"}}))
    manifest = _write(routed["root"] / "classified.yaml",
                      {**routed["spec"], "router": {"classifier": str(tmp_path / "router_run")}})
    held_out = _prompts(24, 1)
    data = tmp_path / "routing.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": text, "adapter": label}) for text, label in held_out))
    out = tmp_path / "report"
    assert main(["eval", str(manifest), "--router-data", str(data), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    predicted = [r["label"] for r in load_classifier(tmp_path / "router_run").predict([t for t, _ in held_out])]
    hand = sum(p == label for p, (_, label) in zip(predicted, held_out))
    result = json.loads((out / "results.json").read_text())
    assert result["correct"] == hand and result["accuracy"] == pytest.approx(hand / 24)
    assert f"router accuracy {hand / 24:.4f} ({hand} of 24 prompts)" in err
    assert hand > 12  # the classifier learnt the words; more than chance
    matrix = result["confusion_matrix"]  # rows: base, alpha, beta
    assert sum(map(sum, matrix)) == 24 and sum(matrix[i][i] for i in range(3)) == hand
    assert f"accuracy **{hand / 24:.4f}**" in (out / "report.md").read_text()

    lines = data.read_text().splitlines()
    lines[2] = json.dumps({"prompt": "a story", "adapter": "sql"})
    data.write_text("\n".join(lines))
    assert main(["eval", str(manifest), "--router-data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "routing.jsonl, line 3" in err and "unknown label 'sql'" in err
