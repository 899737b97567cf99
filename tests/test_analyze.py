"""`tunesmith analyze`: the SVD of the LoRA update against hand-built adapters of known rank, a real PEFT adapter
(scaling rules included), and the command's files and errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from tunesmith.cli.main import main
from tunesmith.diagnostics.lora_rank import analyze_adapter, suggest_rank, update_singular_values


def orthonormal(rows, cols, seed):
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols),
                                       generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q[:rows, :cols] if rows >= cols else q[:cols, :rows].T


def write_adapter(folder, modules, r, alpha, **config):
    """modules: {name: (B, A)}; saved as PEFT names them."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (B, A) in modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.float().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.float().contiguous()
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                                                            **config}))
    return folder


def known_update(sigmas, r=8, out=24, inp=20, seed=0):
    """B (out×r), A (r×in) with B·A = U·diag(sigmas)·Vᵀ: orthonormal rows of A, orthogonal columns of B."""
    A = orthonormal(r, inp, seed)
    U = orthonormal(out, r, seed + 1)
    B = U * torch.tensor(list(sigmas) + [0.0] * (r - len(sigmas)), dtype=torch.float64)
    return B, A


def test_svd_of_a_hand_built_rank_three_update(tmp_path):
    # r=8 trained, but the update has rank 3 with singular values 4, 2, 1 before scaling (alpha/r = 2).
    B, A = known_update([4.0, 2.0, 1.0])
    folder = write_adapter(tmp_path / "a", {"model.layers.0.self_attn.q_proj": (B, A)}, r=8, alpha=16)
    analysis = analyze_adapter(folder, threshold=0.9)
    layer = analysis.layers[0]
    assert layer.layer == 0 and layer.kind == "q_proj" and layer.r == 8 and layer.scaling == 2.0
    assert layer.singular_values[:3] == pytest.approx([8.0, 4.0, 2.0], abs=1e-5)
    assert max(layer.singular_values[3:]) < 1e-5
    # energy: 64/84, 80/84, 84/84
    assert layer.energy[:3] == pytest.approx([64 / 84, 80 / 84, 1.0], abs=1e-6)
    assert layer.rank_at_threshold == 2  # 80/84 = 95% >= 90%
    p = [4 / 7, 2 / 7, 1 / 7]
    assert layer.effective_rank == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-5)
    assert layer.norm == pytest.approx(math.sqrt(84), rel=1e-6)
    assert analysis.suggested_rank == 2 and "lowered to 2" in analysis.advice


def test_fast_singular_values_match_a_dense_svd():
    g = torch.Generator().manual_seed(3)
    B, A = torch.randn(40, 6, generator=g), torch.randn(6, 30, generator=g)
    dense = torch.linalg.svdvals(B.double() @ A.double() * 0.5)[:6]
    assert update_singular_values(B, A, 0.5) == pytest.approx(dense, rel=1e-8)


def test_suggestion_for_a_full_rank_update_asks_for_more(tmp_path):
    modules = {f"model.layers.{i}.mlp.down_proj": known_update([1.0] * 8, seed=i) for i in range(4)}
    analysis = analyze_adapter(write_adapter(tmp_path / "a", modules, r=8, alpha=8))
    assert [layer.rank_at_threshold for layer in analysis.layers] == [8] * 4
    assert [layer.effective_rank for layer in analysis.layers] == pytest.approx([8.0] * 4)
    assert analysis.suggested_rank == 8 and "larger r (e.g. 16)" in analysis.advice


def test_suggestion_covers_90_percent_of_layers_rounded_up_to_a_power_of_two(tmp_path):
    layers = [analyze_adapter(write_adapter(tmp_path / str(k), {"m.layers.0.q": known_update([1.0] * k)}, r=16,
                                            alpha=16)).layers[0] for k in (1, 2, 3, 3, 5, 5, 5, 5, 5, 5)]
    rank, advice = suggest_rank(layers, 16, 0.9)
    assert [layer.rank_at_threshold for layer in layers] == [1, 2, 3, 3, 5, 5, 5, 5, 5, 5]
    assert rank == 8  # 90th percentile needs 5 -> 8


def test_real_peft_adapter_with_rslora_and_alpha_pattern(tiny_model_factory, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True,
                        alpha_pattern={"v_proj": 2})
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # as if trained: B starts at zero
    peft_model.save_pretrained(tmp_path / "run")
    analysis = analyze_adapter(tmp_path / "run")
    assert len(analysis.layers) == 4 and {layer.kind for layer in analysis.layers} == {"q_proj", "v_proj"}
    modules = dict(peft_model.named_modules())
    for layer in analysis.layers:
        lora = modules[f"base_model.model.{layer.module}"]
        expected_scaling = (2 if layer.kind == "v_proj" else 8) / math.sqrt(4)
        assert layer.scaling == pytest.approx(lora.scaling["default"]) == pytest.approx(expected_scaling)
        delta = lora.get_delta_weight("default")  # PEFT's own B·A·scaling
        assert layer.singular_values == pytest.approx(torch.linalg.svdvals(delta.double()).tolist()[:4], rel=1e-4)


def test_cli_writes_table_plot_and_json(tmp_path, capsys):
    modules = {f"model.layers.{i}.self_attn.{m}": known_update([3.0, 1.0], seed=i)
               for i in range(3) for m in ("q_proj", "v_proj")}
    run = write_adapter(tmp_path / "run", modules, r=8, alpha=16)
    assert main(["analyze", str(run), "--threshold", "0.8"]) == 0
    out = run / "analysis"
    assert (out / "lora_rank.png").stat().st_size > 10_000
    saved = json.loads((out / "lora_rank.json").read_text())
    assert saved["suggested_rank"] == 1 and saved["threshold"] == 0.8 and len(saved["layers"]) == 6
    assert saved["layers"][0]["layer"] == 0 and saved["layers"][0]["rank_at_threshold"] == 1  # 9/10 >= 0.8
    md = (out / "lora_rank.md").read_text()
    assert "| model.layers.2.self_attn.v_proj | 8 |" in md and "Suggested rank: **1**" in md
    assert "suggested rank" in capsys.readouterr().err


def test_cli_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.safetensors").write_bytes(b"")
    assert main(["analyze", str(tmp_path / "full")]) == 2
    assert "full fine-tune (no adapter)" in capsys.readouterr().err
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    save_file({"x": torch.zeros(1)}, ia3 / "adapter_model.safetensors")
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    assert main(["analyze", str(ia3)]) == 2
    assert "the adapter is IA3, not LoRA" in capsys.readouterr().err
    assert main(["analyze", str(ia3), "--threshold", "1.5"]) == 2
