"""The task-vector diagnosis before a merge: its figures on hand-built vectors, LoRA deltas against PEFT, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tunesmith.cli.main import main
from tunesmith.errors import ConfigError
from tunesmith.merging import parse_config
from tunesmith.merging.diagnose import diagnose, diagnose_vectors, lora_delta


def _vectors(*tasks: torch.Tensor, layers: int = 2) -> list[tuple[str, list[torch.Tensor]]]:
    """Each task's vector split into `layers` blocks' tensors, as named in a Llama."""
    return [(f"model.layers.{k}.self_attn.q_proj.weight", [t.chunk(layers)[k] for t in tasks]) for k in range(layers)]


def _random(seed: int, shape=(64, 48)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_identical_vectors_agree_fully():
    a = _random(0)
    d = diagnose_vectors(["a", "b"], _vectors(a, a.clone()))
    assert d.whole.cosine[0][1] == pytest.approx(1.0, abs=1e-6)
    assert d.whole.conflict == 0.0 and d.whole.chance == pytest.approx(0.5)  # two vectors overlap: chance is 1/2
    assert d.whole.ratios == pytest.approx([1.0, 1.0])
    assert [layer.name for layer in d.layers] == ["layer 0", "layer 1"]
    assert d.recommendation.method == "linear"


def test_negated_vectors_conflict_everywhere_and_are_kept_apart():
    a = _random(0)
    d = diagnose_vectors(["a", "b"], _vectors(a, -a))
    assert d.whole.cosine[0][1] == pytest.approx(-1.0, abs=1e-6)
    assert d.whole.conflict == 1.0
    assert all(layer.conflict == 1.0 for layer in d.layers)
    assert d.recommendation.method == "keep_apart" and "opposite" in d.recommendation.reason


def test_orthogonal_vectors_are_summed():
    """Disjoint supports: nothing shared, nothing to resolve, so the sum keeps each task whole."""
    a, b = _random(0), _random(1)
    a[32:], b[:32] = 0, 0
    d = diagnose_vectors(["a", "b"], _vectors(a, b))
    assert d.whole.cosine[0][1] == pytest.approx(0.0, abs=1e-7)
    assert d.whole.overlap == 0.0 and d.whole.conflict == 0.0
    assert d.recommendation.method == "task_arithmetic"


def test_unrelated_overlapping_vectors_need_ties():
    """Independent random vectors share coordinates with chance-level sign agreement: TIES' case."""
    d = diagnose_vectors(["a", "b", "c"], _vectors(_random(0, (256, 256)), _random(1, (256, 256)), _random(2, (256, 256))),
                         density=0.2)
    assert abs(d.whole.conflict - d.whole.chance) < 0.05
    assert all(abs(d.whole.cosine[i][j]) < 0.05 for i, j in ((0, 1), (0, 2), (1, 2)))
    assert d.recommendation.method == "ties"


def test_conflict_is_counted_after_the_trim():
    """b agrees with a on a's largest entries and opposes it on the small ones, which the trim drops."""
    a = torch.tensor([[10.0, -9.0, 0.1, -0.2, 0.3, -0.1, 0.2, 0.1, -0.3, 0.2]])
    b = torch.tensor([[8.0, -7.0, -0.1, 0.2, -0.3, 0.1, -0.2, -0.1, 0.3, -0.2]])
    assert diagnose_vectors(["a", "b"], [("w", [a, b])], density=0.2).whole.conflict == 0.0
    assert diagnose_vectors(["a", "b"], [("w", [a, b])], density=1.0).whole.conflict == pytest.approx(0.8)


def test_very_unequal_magnitudes_are_kept_apart():
    a = _random(0)
    d = diagnose_vectors(["small", "mid", "big"], _vectors(a, 1.5 * _random(1), 20 * _random(2)))
    assert d.whole.ratios[2] > 3
    assert d.recommendation.method == "keep_apart" and "big" in d.recommendation.reason


def test_one_vector_or_a_bad_density_is_refused():
    with pytest.raises(ConfigError, match="two or more"):
        diagnose_vectors(["a"], _vectors(_random(0)))
    with pytest.raises(ConfigError) as info:
        diagnose_vectors(["a", "b"], _vectors(_random(0), _random(1)), density=0)
    assert info.value.where == "density"


# ---------------------------------------------------------------- LoRA adapters and full models on tiny Llamas


def _adapter(base: Path, out: Path, seed: int, **extra) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj", "down_proj"],
                        **extra)  # random B, so the update is not zero
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_factory, tmp_path_factory):
    base = tiny_model_factory("llama")
    root = tmp_path_factory.mktemp("diagnose")
    return base, _adapter(base, root / "a", 0), _adapter(base, root / "b", 1, use_rslora=True)


def test_lora_delta_is_peft_merged_weight_minus_base(adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, a, b = adapters
    original = AutoModelForCausalLM.from_pretrained(base).state_dict()
    for adapter in (a, b):
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
        checked = 0
        for name, weight in merged.state_dict().items():
            if any(m in name for m in ("q_proj", "v_proj", "down_proj")):
                torch.testing.assert_close(lora_delta(adapter, name), weight - original[name], rtol=0, atol=1e-5)
                checked += 1
        assert checked == 3 * 2  # the tiny Llama's two blocks


def test_lora_adapters_and_their_folded_models_diagnose_alike(adapters, tmp_path):
    """The same task vectors read as LoRA factors and as full checkpoints (weights minus the base)."""
    from tunesmith.merging import run

    base, a, b = adapters
    folded = [run(parse_config({"method": "lora_to_base", "adapter": str(x), "base_model": str(base),
                                "dtype": "float32"}), tmp_path / x.name) for x in (a, b)]
    as_lora = diagnose(parse_config({"method": "ties", "base_model": str(base),
                                     "models": [{"model": str(a)}, {"model": str(b)}]}), density=0.5)
    as_full = diagnose(parse_config({"method": "linear", "models": [{"model": str(f)} for f in folded]}),
                       base=str(base), density=0.5)
    assert as_lora.labels == ["a", "b"]
    assert as_full.whole.cosine[0][1] == pytest.approx(as_lora.whole.cosine[0][1], abs=1e-4)
    assert as_full.whole.norms == pytest.approx(as_lora.whole.norms, rel=1e-4)
    assert as_full.whole.conflict == pytest.approx(as_lora.whole.conflict, abs=0.01)
    assert [g.name for g in as_lora.layers] == ["layer 0", "layer 1"]


def _cli(tmp_path: Path, config: dict, capsys, *extra: str) -> tuple[int, str]:
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["merge", str(path), "--no-progress", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_diagnose_prints_the_table_and_merges_nothing(adapters, tmp_path, capsys):
    base, a, b = adapters
    config = {"method": "ties", "base_model": str(base), "output": str(tmp_path / "merged"),
              "models": [{"model": str(a), "density": 0.5}, {"model": str(b), "density": 0.5}]}
    code, out = _cli(tmp_path, config, capsys, "--diagnose")
    assert code == 0, out
    assert "top 50% of each tensor kept" in out  # the config's density
    for needle in ("layer 0", "layer 1", "whole", "cos 1·2", "norm 1", "norm 2", "tasks: 1 = a, 2 = b",
                   "recommendation:"):
        assert needle in out, out
    assert not (tmp_path / "merged").exists()
    code, out = _cli(tmp_path, config, capsys)  # a real merge shows the one-line diagnosis first
    assert code == 0, out
    assert "diagnosis: sign conflict" in out and (tmp_path / "merged" / "config.json").is_file()


def test_cli_diagnose_names_the_field_of_a_bad_config(adapters, tiny_model_factory, tmp_path, capsys):
    base, a, _ = adapters
    full = str(tiny_model_factory("llama"))
    code, out = _cli(tmp_path, {"method": "linear", "models": [{"model": full}, {"model": full}]}, capsys, "--diagnose")
    assert code == 2 and "base_model" in out and "--base" in out, out
    code, out = _cli(tmp_path, {"method": "lora_to_base", "adapter": str(a)}, capsys, "--diagnose")
    assert code == 2 and "method" in out and "two or more" in out, out
    code, out = _cli(tmp_path, {"method": "ties", "base_model": str(base), "models": [{"model": str(a)}]}, capsys,
                     "--diagnose")
    assert code == 2 and "models" in out, out
