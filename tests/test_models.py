"""Model loading and LoRA target detection across architectures."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, BertConfig, BertModel

from tunesmith.config.schema import ModelConfig
from tunesmith.errors import ConfigError, ModelError
from tunesmith.models.loading import load_model, resolve_dtype
from tunesmith.models.targets import linear_module_names, resolve_targets


@pytest.mark.parametrize("arch, attention, everything", [
    ("llama", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
     {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
    ("qwen2", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
     {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
    ("gpt2", {"attn.c_attn", "attn.c_proj"}, {"mlp.c_fc", "mlp.c_proj"}),
])
def test_targets_are_detected_per_architecture(tiny_model_factory, arch, attention, everything):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory(arch))
    assert set(resolve_targets(model, "attention")) == attention
    assert set(resolve_targets(model, "all-linear")) == attention | everything
    assert set(resolve_targets(model, "mlp")) == everything
    assert not any("lm_head" in name for name in linear_module_names(model))


def test_bert_attention_targets_are_query_key_value():
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    targets = set(resolve_targets(model, "attention"))
    assert {"self.query", "self.key", "self.value", "output.dense"} & targets >= {"self.query", "self.value"}
    assert "pooler.dense" not in resolve_targets(model, "all-linear")


def test_explicit_targets_are_checked(tiny_model_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"))
    assert resolve_targets(model, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="not found"):
        resolve_targets(model, ["query_key_value"])


def test_unknown_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="model not found"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "nope" / "model")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="not a Hugging Face model folder"):
        load_model(ModelConfig(name_or_path=str(empty)))


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not load 'no-such-org/no-such-model'"):
        load_model(ModelConfig(name_or_path="no-such-org/no-such-model"))


def test_an_attention_implementation_that_cannot_run_names_its_field(stories_dir, monkeypatch):
    import torch

    from tunesmith.models.loading import wrap_load_error

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flash in ("flash_attention_2", "kernels-community/flash-attn2"):
        with pytest.raises(ConfigError, match="FlashAttention, which runs on CUDA GPUs only") as caught:
            load_model(ModelConfig(name_or_path=str(stories_dir), attn_implementation=flash))
        assert caught.value.where == "model.attn_implementation"
    with pytest.raises(ConfigError, match="'foo' cannot be used: Specified `attn_implementation=\"foo\"`") as caught:
        load_model(ModelConfig(name_or_path=str(stories_dir), attn_implementation="foo"))
    assert caught.value.where == "model.attn_implementation"
    # on a GPU without the flash-attn package transformers raises ImportError; it too names the field
    missing = ImportError("FlashAttention2 has been toggled on, but it cannot be used")
    assert wrap_load_error("m", missing, "flash_attention_2").where == "model.attn_implementation"
    assert wrap_load_error("m", OSError("no file"), "flash_attention_2").where == "model.name_or_path"


def test_cpu_dtype_is_float32_and_explicit_choice_wins():
    import torch

    if not torch.cuda.is_available():
        assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_directly_on_a_gguf_file(tmp_path, method, monkeypatch):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    import torch
    from peft import PeftModel

    from tunesmith.models.loading import load_for_inference
    from tunesmith.recipes import train

    from .test_gguf import write_tiny_gguf
    from .test_training import make_config

    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    cfg = make_config(gguf_path, tmp_path / "run", method, max_steps=4)
    cfg.data.max_length = 96
    train(cfg)
    loaded = load_for_inference(str(tmp_path / "run"))
    inputs = loaded.tokenizer(["hello"], return_tensors="pt")
    with torch.no_grad():
        ours = loaded.model(**inputs).logits
    if method == "lora":
        base = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
        plain = PeftModel.from_pretrained(base, tmp_path / "run").eval()
    else:
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "run", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(plain(**inputs).logits, ours, atol=1e-5)
