"""Adapter sets (tunesmith/inference/adapter_set.py): manifest checks, switching, mixed batches, and the server."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import yaml


def _make_lora(base_dir, out, seed, *, template=None, run=True, target=("q_proj", "v_proj")):
    """A LoRA adapter over `base_dir` with random (non-zero) weights, as a tunesmith run folder when `run`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(target), init_lora_weights=False)
    model = get_peft_model(base, config)
    with torch.no_grad():  # large enough that each adapter changes the greedy tokens
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(8.0)
    model.save_pretrained(out)
    if run:
        meta = {"artifact": "peft", "base_model": {"name_or_path": str(base_dir)}, "template": template or "alpaca_en",
                "method": {"name": "lora"}}
        (out / "tunesmith_run.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_factory):
    import torch

    torch.set_num_threads(1)
    base = tiny_model_factory("llama")
    root = tmp_path_factory.mktemp("set")
    a = _make_lora(base, root / "a", 1)
    b = _make_lora(base, root / "b", 2, run=False)  # a plain PEFT folder, as made outside tunesmith
    manifest = root / "set.yaml"
    manifest.write_text(yaml.safe_dump({"base": str(base), "template": "alpaca_en",
                                        "adapters": {"alpha": "a", "beta": {"path": "b", "template": "alpaca_en"}}}))
    return {"base": base, "root": root, "a": a, "b": b, "manifest": manifest}


@pytest.fixture(scope="module")
def loaded_set(adapters):
    from tunesmith.inference.adapter_set import load_adapter_set

    return load_adapter_set(adapters["manifest"])


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def _error(manifest):
    from tunesmith.errors import TunesmithError
    from tunesmith.inference.adapter_set import load_adapter_set

    with pytest.raises(TunesmithError) as info:
        load_adapter_set(manifest)
    return str(info.value)


def test_manifest_errors_name_file_adapter_and_field(adapters, tiny_model_factory, tmp_path):
    base, root = adapters["base"], adapters["root"]
    missing = _write(tmp_path / "m1.yaml", {"base": str(base), "adapters": {"alpha": str(root / "nowhere")}})
    text = _error(missing)
    assert str(missing) in text and "adapters.alpha.path" in text and "not found" in text
    other = tiny_model_factory("qwen2")
    wrong = _write(tmp_path / "m2.yaml", {"base": str(other), "adapters": {"alpha": str(adapters["a"])}})
    text = _error(wrong)
    assert "adapters.alpha" in text and "different base" in text
    bad = _write(tmp_path / "m3.yaml", {"base": str(base), "adapters": {"alpha": str(adapters["a"])}, "extra": 1})
    assert "extra" in _error(bad)
    taken = _write(tmp_path / "m4.yaml", {"base": str(base), "adapters": {"base": str(adapters["a"])}})
    assert "taken" in _error(taken)
    default = _write(tmp_path / "m5.yaml", {"base": str(base), "default": "gamma",
                                            "adapters": {"alpha": str(adapters["a"])}})
    assert "default" in _error(default) and "gamma" in _error(default)


def test_same_weights_at_another_path_pass_and_other_weights_fail(adapters, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.inference.adapter_set import check_adapters, read_manifest

    copy = tmp_path / "copy"
    shutil.copytree(adapters["base"], copy)
    same = _write(tmp_path / "same.yaml", {"base": str(copy), "adapters": {"alpha": str(adapters["a"])}})
    check_adapters(read_manifest(same))  # the adapter names the original folder: same fingerprint, accepted
    model = AutoModelForCausalLM.from_pretrained(copy)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    other = tmp_path / "other"
    model.save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(copy / name, other / name)
    changed = _write(tmp_path / "changed.yaml", {"base": str(other), "adapters": {"alpha": str(adapters["a"])}})
    assert "different base" in _error(changed)


def _greedy(model, tokenizer, prompt, n=8):
    import torch

    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        logits = model(**ids).logits
    return out[0].tolist(), logits


def test_each_adapter_and_the_base_match_models_loaded_alone(adapters, loaded_set):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer, prompt = loaded_set.tokenizer, "Once upon a time"
    outputs = {}
    for name, folder in (("alpha", adapters["a"]), ("beta", adapters["b"])):
        alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapters["base"]), folder).eval()
        expected = _greedy(alone, tokenizer, prompt)
        with loaded_set.using([name]) as kwargs:
            assert kwargs == {}
            got = _greedy(loaded_set.model, tokenizer, prompt)
        assert got[0] == expected[0]
        torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-5)
        outputs[name] = got[0]
    plain = AutoModelForCausalLM.from_pretrained(adapters["base"]).eval()
    with loaded_set.using(["base"]):
        got = _greedy(loaded_set.model, tokenizer, prompt)
    expected = _greedy(plain, tokenizer, prompt)
    assert got[0] == expected[0]
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-5)
    assert len({tuple(v) for v in [*outputs.values(), got[0]]}) == 3  # the adapters do change the model
    with loaded_set.using(["alpha"]):  # switching back leaves nothing of the base pass behind
        assert _greedy(loaded_set.model, tokenizer, prompt)[0] == outputs["alpha"]


def test_mixed_batch_equals_single_adapter_batches(loaded_set):
    from tunesmith.inference.generation import Generator, SamplingOptions

    generator = Generator(loaded_set.loaded(), loaded_set)
    options = SamplingOptions(max_new_tokens=8)
    conversations = [[{"role": "user", "content": text}] for text in ("Once upon a time", "Lily saw a cat",
                                                                      "The sun", "Tom had a ball")]
    names = ["alpha", "beta", "base", "alpha"]
    mixed = generator.generate(conversations, options, adapters=names)
    alone = [generator.generate([c], options, adapters=[n])[0] for c, n in zip(conversations, names)]
    assert mixed == alone
    assert generator.adapter == "alpha"  # the default: the manifest's first adapter
    generator.use("beta")
    assert generator.generate(conversations[1:2], options) == [alone[1]]
    generator.use("alpha")


def test_unknown_adapter_is_a_clear_error(loaded_set):
    from tunesmith.errors import ConfigError
    from tunesmith.inference.generation import Generator, SamplingOptions

    generator = Generator(loaded_set.loaded(), loaded_set)
    with pytest.raises(ConfigError, match="no adapter 'gamma'.*set.yaml") as info:
        generator.generate([[{"role": "user", "content": "hi"}]], SamplingOptions(max_new_tokens=2),
                           adapters=["gamma"])
    assert "alpha" in str(info.value)  # the hint lists the names


# ------------------------------------------------------------------------------------------------------- server

def _call(url, body=None, key=None, method=None):
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_routes_lists_batches_and_guards_management(adapters, loaded_set):
    from tunesmith.inference.generation import Generator
    from tunesmith.inference.server import ModelServer

    generator = Generator(loaded_set.loaded(), loaded_set)
    with ModelServer(generator, "tiny-set", admin_key="adm1n", batch_wait=0.3) as server:
        status, models = _call(server.url + "/models")
        assert status == 200 and [m["id"] for m in models["data"]] == ["base", "alpha", "beta"]

        def ask(model, text="Once upon a time"):
            body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
            return _call(server.url + "/chat/completions", body)

        single = {name: ask(name)[1]["choices"][0]["message"]["content"] for name in ("alpha", "beta", "base")}
        assert len(set(single.values())) == 3
        results: dict[str, str] = {}
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, ask(n)[1]))
                   for n in ("alpha", "beta", "base")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {n: r["choices"][0]["message"]["content"] for n, r in results.items()} == single
        assert {n: r["model"] for n, r in results.items()} == {n: n for n in single}
        assert max(server.worker.batches) > 1  # the three adapters shared a batch
        assert ask("gamma")[0] == 404

        url = server.url + "/adapters"
        spec = {"name": "gamma", "path": str(adapters["b"])}
        assert _call(url, spec)[0] == 401
        assert _call(url, spec, key="wrong")[0] == 401
        assert _call(url + "/beta", key=None, method="DELETE")[0] == 401
        status, reply = _call(url, spec, key="adm1n")
        assert status == 200, reply
        assert ask("gamma")[1]["choices"][0]["message"]["content"] == single["beta"]
        assert _call(url, spec, key="adm1n")[0] == 409  # the name is taken
        status, reply = _call(url + "/gamma", key="adm1n", method="DELETE")
        assert status == 200, reply
        assert ask("gamma")[0] == 404
        assert [m["id"] for m in _call(server.url + "/models")[1]["data"]] == ["base", "alpha", "beta"]


def test_server_without_admin_key_refuses_management(loaded_set, adapters):
    from tunesmith.inference.generation import Generator
    from tunesmith.inference.server import ModelServer

    with ModelServer(Generator(loaded_set.loaded(), loaded_set), "tiny-set") as server:
        status, reply = _call(server.url + "/adapters", {"name": "x", "path": str(adapters["b"])}, key="anything")
        assert status == 403 and "admin" in reply["error"]["message"]


# ---------------------------------------------------------------------------------------------------------- CLI

def test_adapters_command_writes_checks_and_removes(adapters, tmp_path, capsys):
    from tunesmith.cli.main import main
    from tunesmith.inference.adapter_set import read_manifest

    manifest = tmp_path / "tasks.yaml"
    assert main(["adapters", "add", str(manifest), "alpha", str(adapters["a"])]) == 0
    assert main(["adapters", "add", str(manifest), "beta", str(adapters["b"]), "--template", "chatml"]) == 0
    read = read_manifest(manifest)
    assert read.base == str(adapters["base"].resolve()) and list(read.adapters) == ["alpha", "beta"]
    assert read.adapters["alpha"].template == "alpaca_en" and read.adapters["beta"].template == "chatml"
    assert main(["adapters", "check", str(manifest)]) == 0
    assert main(["adapters", "add", str(manifest), "alpha", str(adapters["b"])]) == 2  # the name is taken
    assert main(["adapters", "remove", str(manifest), "gamma"]) == 2
    assert main(["adapters", "remove", str(manifest), "beta"]) == 0
    assert list(read_manifest(manifest).adapters) == ["alpha"]
    assert "no adapter 'gamma'" in capsys.readouterr().err


def generate_records(manifest, records: list[dict], tmp_path, *options: str):
    """`tunesmith generate MANIFEST` on `records` (written to tmp_path/prompts.jsonl): the output rows, and the
    prompts and output files for further runs."""
    from tunesmith.cli.main import main

    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in records))
    assert main(["generate", str(manifest), "--prompts", str(prompts), "--out", str(out), *options]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()], prompts, out


def test_generate_takes_a_per_record_adapter(adapters, loaded_set, tmp_path, capsys):
    from tunesmith.cli.main import main
    from tunesmith.inference.generation import Generator, SamplingOptions

    records = [{"prompt": "Once upon a time", "adapter": "beta"}, {"prompt": "Lily saw a cat"},
               {"prompt": "The sun", "adapter": "base"}]
    rows, prompts, out = generate_records(adapters["manifest"], records, tmp_path, "--max-new-tokens", "6",
                                          "--adapter", "alpha")
    got = [row["response"] for row in rows]
    generator = Generator(loaded_set.loaded(), loaded_set)
    options = SamplingOptions(max_new_tokens=6)
    expected = [generator.generate([[{"role": "user", "content": r["prompt"]}]], options,
                                   adapters=[r.get("adapter", "alpha")])[0] for r in records]
    assert got == expected
    prompts.write_text(json.dumps({"prompt": "x", "adapter": "gamma"}))
    assert main(["generate", str(adapters["manifest"]), "--prompts", str(prompts), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "prompts.jsonl" in err and "adapter" in err and "gamma" in err
    assert main(["generate", str(adapters["base"]), "--prompts", str(prompts), "--out", str(out),
                 "--adapter", "alpha"]) == 2
    assert "--adapter" in capsys.readouterr().err


def test_chat_switches_adapters(loaded_set):
    from rich.console import Console

    from tunesmith.cli.chat import chat_loop
    from tunesmith.inference.generation import Generator, SamplingOptions

    generator = Generator(loaded_set.loaded(), loaded_set)
    lines = iter(["/adapter", "/adapter beta", "Once upon a time", "/adapter gamma", "/adapter base", "/exit"])
    console = Console(record=True, width=200)
    chat_loop(generator, SamplingOptions(max_new_tokens=4), console=console, read=lambda _: next(lines))
    text = console.export_text()
    assert "adapters: base, alpha, beta" in text and "(adapter beta)" in text and "no adapter 'gamma'" in text
    assert generator.adapter == "base"


def test_eval_scores_each_adapter_on_its_own_suite(adapters, tmp_path, capsys):
    from tunesmith.cli.main import main

    texts = {"alpha": "Once upon a time there was a cat.\nThe cat sat.\n",
             "beta": "Lily went to the park.\nShe saw a dog.\n"}
    spec = {}
    for name, text in texts.items():
        (tmp_path / f"{name}.txt").write_text(text)
        _write(tmp_path / f"{name}_suite.yaml",
               {"name": f"{name}-suite", "tasks": [{"name": f"{name}_text", "type": "perplexity",
                                                     "data": f"{name}.txt", "max_length": 32}]})
        spec[name] = {"path": str(adapters["a" if name == "alpha" else "b"]), "suite": f"{name}_suite.yaml",
                      "template": "alpaca_en"}
    manifest = _write(tmp_path / "tasks.yaml", {"base": str(adapters["base"]), "adapters": spec})
    out = tmp_path / "report"
    assert main(["eval", str(manifest), "--compare", "base", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert [(r["adapter"], r["task"], r["metric"]) for r in summary] == [("alpha", "alpha_text", "perplexity"),
                                                                        ("beta", "beta_text", "perplexity")]
    assert all(r["value"] != r["base"] for r in summary)  # the adapter, not the base, was scored
    report = (out / "report.md").read_text()
    assert "| alpha | alpha-suite | alpha_text | perplexity |" in report
    assert (out / "alpha" / "report.md").is_file() and (out / "beta" / "report.html").is_file()
    del spec["beta"]["suite"]
    _write(manifest, {"base": str(adapters["base"]), "adapters": spec})
    assert main(["eval", str(manifest)]) == 2
    assert "adapters.beta.suite" in capsys.readouterr().err


def test_eval_of_a_set_judges_each_adapter_head_to_head_with_the_base(adapters, tmp_path, capsys):
    """`tunesmith eval SET --compare base` with a judged generation task asks the judge to compare each adapter's
    replies with the base's, both orders, as `tunesmith eval RUN --compare` does."""
    from tunesmith.cli.main import main

    from .conftest import EXAMPLES, PairwiseJudge

    judge = PairwiseJudge("longer")
    try:
        suite = _write(tmp_path / "judged.yaml", {"name": "judged", "generation": {"max_new_tokens": 8}, "tasks": [
            {"name": "stories", "type": "generation", "data": str(EXAMPLES / "data" / "stories_chat.jsonl"),
             "max_samples": 3, "metrics": [], "judge": {"model": "j", "base_url": judge.url}}]})
        manifest = _write(tmp_path / "set.yaml", {"base": str(adapters["base"]), "template": "alpaca_en",
                                                  "adapters": {"alpha": str(adapters["a"])}})
        assert main(["eval", str(manifest), "--suite", str(suite), "--compare", "base", "--out",
                     str(tmp_path / "out")]) == 0
    finally:
        judge.close()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (row,) = results["comparison"]["alpha"]["head_to_head"]
    tuned, base = (results[k]["alpha"]["tasks"]["stories"]["samples"] for k in ("tuned", "base"))
    expected = [1.0 if len(t["reply"]) > len(b["reply"]) else 0.5 if len(t["reply"]) == len(b["reply"]) else 0.0
                for t, b in zip(tuned, base)]
    assert [s["head_to_head"]["score"] for s in tuned] == expected
    assert row["win_rate"] == pytest.approx(sum(expected) / 3)
    assert len(judge.seen) == 3 + 3 + 6  # each side's replies graded alone, then both orders of each pair
    assert "Head to head (judge)" in (tmp_path / "out" / "alpha" / "report.md").read_text()
    assert "head to head on stories" in capsys.readouterr().err
