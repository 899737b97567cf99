"""LoRA folding and combining, checked against PEFT itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunesmith.merging import parse_config, run


def _adapter(base: Path, out: Path, seed: int, r: int, **extra) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    extra.setdefault("target_modules", ["q_proj", "v_proj", "down_proj"])
    config = LoraConfig(r=r, lora_alpha=2 * r, init_lora_weights=False, **extra)  # random B, so the update is not zero
    get_peft_model(model, config).save_pretrained(out)
    return out


def _peft_model(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def setup(tiny_model_factory, tmp_path_factory):
    base = tiny_model_factory("llama")
    root = tmp_path_factory.mktemp("adapters")
    return base, [_adapter(base, root / "a", 0, 4), _adapter(base, root / "b", 1, 2, use_rslora=True)]


IDS = torch.tensor([[1, 5, 9, 40, 77, 3, 2]])


def test_lora_to_base_equals_peft_merge(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    base, (a, b) = setup
    for adapter in (a, b):
        out = run(parse_config({"method": "lora_to_base", "adapter": str(adapter), "base_model": str(base),
                                "max_shard_size": "40KB"}), tmp_path / adapter.name)
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        reference = _peft_model(base, adapter).merge_and_unload()
        for (name, ours), (_, theirs) in zip(merged.state_dict().items(), reference.state_dict().items()):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6, msg=name)
        torch.testing.assert_close(_logits(merged, IDS), _logits(_peft_model(base, adapter), IDS), rtol=0, atol=1e-4)


def test_lora_to_base_reads_base_from_adapter_config(setup, tmp_path):
    base, (a, _) = setup
    out = run(parse_config({"method": "lora_to_base", "adapter": str(a)}), tmp_path / "o")
    assert (out / "config.json").is_file()


def test_adapters_as_merge_inputs_equal_their_folded_models(setup, tmp_path):
    """A LoRA folder listed under `models` is read as base + B A, exactly as if folded to disk first."""
    from tunesmith.merging.checkpoint import Checkpoint

    base, (a, b) = setup
    folded = [run(parse_config({"method": "lora_to_base", "adapter": str(x), "dtype": "float32"}),
                  tmp_path / f"folded-{x.name}") for x in (a, b)]

    def ties(models, out):
        return run(parse_config({"method": "ties", "base_model": str(base), "dtype": "float32",
                                 "models": [{"model": str(m), "density": 0.5} for m in models]}), out)

    direct, reference = Checkpoint(ties([a, b], tmp_path / "direct")), Checkpoint(ties(folded, tmp_path / "ref"))
    for name in reference.tensors:
        assert torch.equal(direct.read(name), reference.read(name)), name
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(direct.read(q), Checkpoint(base).read(q))  # the adapters' updates are in it
    assert (tmp_path / "direct" / "tokenizer.json").is_file()


def _delta_sum(base, adapters_and_weights):
    """Σ wᵢ (merged_i − base) per weight, via PEFT's own merge."""
    from transformers import AutoModelForCausalLM

    base_state = AutoModelForCausalLM.from_pretrained(base).state_dict()
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in base_state.items()}
    for adapter, weight in adapters_and_weights:
        merged = _peft_model(base, adapter).merge_and_unload().state_dict()
        for k in total:
            total[k] += weight * (merged[k].double() - base_state[k].double())
    return base_state, total


def test_combine_concat_is_exact(setup, tmp_path):
    base, (a, b) = setup
    out = run(parse_config({"method": "lora_combine", "adapters": [{"path": str(a), "weight": 0.7},
                                                                  {"path": str(b), "weight": -0.4}]}),
              tmp_path / "c")
    combined = _peft_model(base, out).merge_and_unload().state_dict()
    base_state, delta = _delta_sum(base, [(a, 0.7), (b, -0.4)])
    for k in combined:
        torch.testing.assert_close(combined[k].double(), base_state[k].double() + delta[k], rtol=0, atol=2e-6, msg=k)


def test_combine_concat_equals_peft_add_weighted_adapter_cat(setup, tmp_path):
    """PEFT's own `cat` combination (weights folded into A, α = r) gives the same merged weights."""
    base, (a, b) = setup
    peft_model = _peft_model(base, a)  # adapter "default" = a (not rsLoRA, so the cat adapter's scale is 1)
    peft_model.load_adapter(b, adapter_name="b")
    peft_model.add_weighted_adapter(["default", "b"], [0.7, -0.4], "cat", combination_type="cat")
    peft_model.set_adapter("cat")
    theirs = peft_model.merge_and_unload(adapter_names=["cat"]).state_dict()
    out = run(parse_config({"method": "lora_combine", "adapters": [{"path": str(a), "weight": 0.7},
                                                                  {"path": str(b), "weight": -0.4}]}),
              tmp_path / "c")
    ours = _peft_model(base, out).merge_and_unload().state_dict()
    assert set(ours) == set(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=2e-6, msg=k)


def test_lora_to_base_gpt2_conv1d_and_embedding(tiny_model_factory, tmp_path):
    """GPT-2 stores Conv1D weights transposed (fan_in_fan_out) and LoRA on an embedding swaps A and B."""
    from transformers import AutoModelForCausalLM

    base = tiny_model_factory("gpt2")
    adapter = _adapter(base, tmp_path / "gpt2-lora", 3, 4, target_modules=["c_attn", "c_fc", "wte"],
                       fan_in_fan_out=True)
    out = run(parse_config({"method": "lora_to_base", "adapter": str(adapter), "base_model": str(base)}),
              tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = _peft_model(base, adapter).merge_and_unload()
    theirs = reference.state_dict()
    changed = 0
    base_state = AutoModelForCausalLM.from_pretrained(base).state_dict()
    for name, ours in merged.state_dict().items():
        torch.testing.assert_close(ours, theirs[name], rtol=0, atol=2e-6, msg=name)
        changed += not torch.equal(ours, base_state[name])
    assert changed >= 5  # wte and both layers' c_attn and c_fc really moved


def test_combine_svd_full_rank_is_exact_and_low_rank_is_optimal(setup, tmp_path):
    base, (a, b) = setup
    out = run(parse_config({"method": "lora_combine", "mode": "svd", "rank": 6,
                            "adapters": [{"path": str(a)}, {"path": str(b)}]}), tmp_path / "s6")
    combined = _peft_model(base, out).merge_and_unload().state_dict()
    base_state, delta = _delta_sum(base, [(a, 1.0), (b, 1.0)])
    for k in combined:
        torch.testing.assert_close(combined[k].double(), base_state[k].double() + delta[k], rtol=0, atol=2e-6, msg=k)
    out = run(parse_config({"method": "lora_combine", "mode": "svd", "rank": 2,
                            "adapters": [{"path": str(a)}, {"path": str(b)}]}), tmp_path / "s2")
    low = _peft_model(base, out).merge_and_unload().state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    s = torch.linalg.svdvals(delta[name])
    error = torch.linalg.matrix_norm(low[name].double() - base_state[name].double() - delta[name])
    assert float(error) == pytest.approx(float(s[2:].square().sum().sqrt()), rel=1e-4)  # Eckart–Young


def test_combine_errors(setup, tmp_path, tiny_model_factory, capsys):
    import yaml

    from tunesmith.cli.main import main

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, (a, _) = setup
    other = tmp_path / "other_targets"
    get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                   LoraConfig(r=2, target_modules=["k_proj"], init_lora_weights=False)).save_pretrained(other)
    cases = [({"method": "lora_combine", "adapters": [{"path": str(a)}, {"path": str(other)}]}, "different modules"),
             ({"method": "lora_combine", "mode": "svd", "adapters": [{"path": str(a)}]}, "needs a target rank"),
             ({"method": "lora_to_base", "adapter": str(tmp_path)}, "adapter_config.json missing")]
    for config, needle in cases:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({**config, "output": str(tmp_path / "o")}))
        code = main(["merge", str(path), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, err
