"""The streamed engine end to end on tiny sharded models: exact results, loadable output, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from tunesmith.cli.main import main
from tunesmith.merging import merge, parse_config
from tunesmith.merging.checkpoint import Checkpoint, PlannedTensor, ShardedWriter


def _expert(base: Path, out: Path, seed: int, scale: float = 0.05) -> Path:
    """A perturbed copy of `base`, saved in several shards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=g) * scale)
    model.save_pretrained(out, max_shard_size="40KB")
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def experts(tiny_model_factory, tmp_path_factory):
    base = tiny_model_factory("llama")
    root = tmp_path_factory.mktemp("experts")
    return base, [_expert(base, root / f"e{i}", seed=i) for i in range(2)]


def _state(folder: Path) -> dict[str, torch.Tensor]:
    checkpoint = Checkpoint(folder)
    state = {name: checkpoint.read(name).double() for name in checkpoint.tensors}
    checkpoint.close()
    return state


def test_experts_are_sharded(experts):
    assert (experts[1][0] / "model.safetensors.index.json").is_file()


def test_task_arithmetic_end_to_end_matches_float64(experts, tmp_path):
    from transformers import AutoModelForCausalLM

    base, (a, b) = experts
    config = parse_config({"method": "task_arithmetic", "base_model": str(base), "max_shard_size": "50KB",
                           "models": [{"model": str(a), "weight": 0.8}, {"model": str(b), "weight": -0.3}],
                           "parameters": {"scale": 1.5}})
    result = merge(config, tmp_path / "out")
    assert len(result.shards) > 1 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    sb, sa, s2, merged = _state(base), _state(a), _state(b), _state(tmp_path / "out")
    for name, value in merged.items():
        expected = sb[name] + 1.5 * (0.8 * (sa[name] - sb[name]) - 0.3 * (s2[name] - sb[name]))
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # plain transformers loads it
    assert model.config.model_type == "llama"
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "tunesmith_merge.json").is_file()


def test_slerp_filters_and_gradient(experts, tmp_path):
    base, (a, b) = experts
    config = parse_config({"method": "slerp", "models": [{"model": str(a)}, {"model": str(b)}],
                           "parameters": {"t": [{"filter": "self_attn", "value": 0.0},
                                                {"filter": "mlp", "value": [0.0, 1.0]}, {"value": 1.0}]}})
    merge(config, tmp_path / "out")
    sa, s2, merged = _state(a), _state(b), _state(tmp_path / "out")
    torch.testing.assert_close(merged["model.layers.1.self_attn.q_proj.weight"],
                               sa["model.layers.1.self_attn.q_proj.weight"], rtol=0, atol=1e-7)
    torch.testing.assert_close(merged["model.layers.0.mlp.up_proj.weight"], sa["model.layers.0.mlp.up_proj.weight"],
                               rtol=0, atol=1e-7)  # gradient: first layer → 0
    torch.testing.assert_close(merged["model.layers.1.mlp.up_proj.weight"], s2["model.layers.1.mlp.up_proj.weight"],
                               rtol=0, atol=1e-7)  # last layer → 1
    torch.testing.assert_close(merged["model.norm.weight"], s2["model.norm.weight"], rtol=0, atol=1e-7)


def test_ties_and_dare_streamed_equal_in_memory(experts, tmp_path):
    """The engine's per-tensor path gives the method's result for the whole tensors (bf16 output)."""
    from tunesmith.merging.methods import TensorParams, get_method

    base, (a, b) = experts
    for method in ("ties", "dare_ties"):
        config = parse_config({"method": method, "base_model": str(base), "dtype": "bfloat16",
                               "models": [{"model": str(a), "density": 0.4}, {"model": str(b), "density": 0.6,
                                                                               "weight": 0.5}]})
        merge(config, tmp_path / method)
        sb, sa, s2 = _state(base), _state(a), _state(b)
        merged = _state(tmp_path / method)
        name = "model.layers.0.mlp.down_proj.weight"
        m = get_method(method)
        p = TensorParams(name, [1.0, 0.5], [0.4, 0.6], dict(m.options))
        expected = m.merge([sa[name].float(), s2[name].float()], sb[name].float(), p).to(torch.bfloat16)
        assert torch.equal(merged[name].to(torch.bfloat16), expected)


def test_writer_round_trip_bf16_many_shards(tmp_path):
    tensors = {f"t{i}": torch.randn(3, i + 1).to(torch.bfloat16) for i in range(5)}
    tensors["ids"] = torch.arange(6)
    plan = [PlannedTensor(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    writer = ShardedWriter(tmp_path, plan, max_shard_bytes=20)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    names = writer.close()
    assert len(names) > 2
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    for name, tensor in tensors.items():
        with safe_open(tmp_path / index["weight_map"][name], "pt") as handle:
            assert torch.equal(handle.get_tensor(name), tensor)


# ---- errors: clear message naming the file/tensor/field, exit code 2, no traceback ----

def _cli(tmp_path: Path, config: dict | str, capsys, *extra) -> tuple[int, str]:
    path = tmp_path / "merge.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    code = main(["merge", str(path), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_cli_merges_and_reports(experts, tmp_path, capsys):
    base, (a, b) = experts
    code, err = _cli(tmp_path, {"method": "linear", "models": [{"model": str(a)}, {"model": str(b)}],
                                "output": str(tmp_path / "out")}, capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "config.json").is_file()
    code, err = _cli(tmp_path, {"method": "linear", "models": [{"model": str(a)}, {"model": str(b)}],
                                "output": str(tmp_path / "out")}, capsys)
    assert code == 2 and "not empty" in err and "--overwrite" in err


@pytest.mark.parametrize("arch,needle", [("qwen2", "different architectures"), ("gpt2", "different architectures")])
def test_mismatched_architecture(experts, tiny_model_factory, tmp_path, capsys, arch, needle):
    base, (a, _) = experts
    code, err = _cli(tmp_path, {"method": "linear", "models": [{"model": str(a)}, {"model": str(tiny_model_factory(arch))}],
                                "output": str(tmp_path / "o")}, capsys)
    assert code == 2 and needle in err and "config.json" in err


def test_mismatched_vocabulary_and_shapes(experts, tmp_path, capsys, stories_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, (a, _) = experts
    model = AutoModelForCausalLM.from_pretrained(a)
    model.resize_token_embeddings(model.config.vocab_size + 8)
    model.save_pretrained(tmp_path / "bigger")
    AutoTokenizer.from_pretrained(a).save_pretrained(tmp_path / "bigger")
    code, err = _cli(tmp_path, {"method": "linear", "models": [{"model": str(a)}, {"model": str(tmp_path / "bigger")}],
                                "output": str(tmp_path / "o")}, capsys)
    assert code == 2 and "different vocabulary sizes" in err and ("embed_tokens" in err or "lm_head" in err)
    # Same shapes, different token ids: caught from tokenizer.json.
    other = tmp_path / "other_vocab"
    AutoModelForCausalLM.from_pretrained(a).save_pretrained(other)
    data = json.loads((Path(a) / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    first, second = list(vocab)[10:12]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other / "tokenizer.json").write_text(json.dumps(data))
    code, err = _cli(tmp_path, {"method": "linear", "models": [{"model": str(a)}, {"model": str(other)}],
                                "output": str(tmp_path / "o")}, capsys)
    assert code == 2 and "different vocabularies" in err and "tokenizer.json" in err


def test_config_errors(experts, tmp_path, capsys):
    base, (a, b) = experts
    cases = [
        ("method: [unclosed", "invalid YAML"),
        ({"method": "nope", "models": [{"model": str(a)}]}, "unknown merge method"),
        ({"method": "ties", "models": [{"model": str(a)}]}, "needs a base_model"),
        ({"method": "slerp", "models": [{"model": str(a)}]}, "merges 2 models"),
        ({"method": "linear", "models": [{"model": str(a)}], "parameters": {"t": 0.5}}, "parameters.t"),
        ({"method": "linear", "models": [{"model": str(a), "density": 0.5}]}, "models[0].density"),
        ({"method": "linear", "models": [{"model": str(a), "wieght": 1}]}, "wieght"),
        ({"method": "linear", "models": [{"model": str(tmp_path / "missing")}], "output": str(tmp_path / "o")},
         "model folder not found"),
        ({"method": "linear", "models": [{"model": str(a), "weight": 1}, {"model": str(b), "weight": -1}],
          "output": str(tmp_path / "o")}, "sum to 0"),
        ({"method": "slerp", "models": [{"model": str(a)}, {"model": str(b)}], "output": str(tmp_path / "o"),
          "parameters": {"t": [{"filter": "mlp", "value": 0.3}]}}, "no entry applies to tensor"),
    ]
    for config, needle in cases:
        code, err = _cli(tmp_path, config, capsys)
        assert code == 2 and needle in err, (config, err)


def test_refuses_pickled_weights(tmp_path, capsys, experts):
    base, (a, _) = experts
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not unpickled")
    (tmp_path / "pickled" / "config.json").write_text("{}")
    code, err = _cli(tmp_path, {"method": "linear", "models": [{"model": str(a)}, {"model": str(tmp_path / "pickled")}],
                                "output": str(tmp_path / "o")}, capsys)
    assert code == 2 and "only safetensors" in err


def test_example_configs_parse():
    """Every examples/merge*.yaml is a valid merge config or eval suite (the schema and the examples agree)."""
    from tunesmith.merging import load_config
    from tunesmith.merging.evaluate import load_suite

    root = Path(__file__).resolve().parents[1] / "examples"
    examples = sorted(root.glob("merge*.yaml"))
    assert len(examples) >= 4
    for path in examples:
        if path.name == "merge_eval.yaml":
            assert len(load_suite(path).tasks) == 2
        else:
            assert load_config(path).output.startswith("runs/merged/")


def test_gradient_positions_follow_mergekit():
    """Blocks spread 0…1 over the depth; tensors outside blocks sit at 0; a one-block model's block at 1."""
    from tunesmith.merging.schedule import layer_positions, resolve

    names = ["model.embed_tokens.weight", *[f"model.layers.{i}.mlp.up_proj.weight" for i in range(5)],
             "model.norm.weight", "lm_head.weight"]
    pos = layer_positions(names)
    assert [pos[n] for n in names] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 0.0, 0.0]
    assert resolve([0.0, 1.0, 0.0], names[2], pos[names[2]], "t") == pytest.approx(0.5)
    assert resolve([0.2, 0.9], names[-1], pos[names[-1]], "t") == pytest.approx(0.2)
    assert layer_positions(["model.layers.0.mlp.up_proj.weight", "lm_head.weight"]) == {
        "model.layers.0.mlp.up_proj.weight": 1.0, "lm_head.weight": 0.0}
