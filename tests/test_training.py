"""End-to-end training on real and tiny random models: learning, saving, reloading, merging, resuming."""

from __future__ import annotations

import json
import os

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from tunesmith.config.loading import validate_config
from tunesmith.inference.export import export_run
from tunesmith.recipes import train

from .conftest import EXAMPLES

STORIES_DATA = str(EXAMPLES / "data" / "stories_chat.jsonl")


def make_config(model_dir, out_dir, method="lora", data=None, **training):
    """A small stories260K run; `training` holds training.* fields, and speed.* fields or switches by name."""
    from tunesmith.config.schema import SPEED_SWITCHES, SpeedConfig

    method_cfg = method if isinstance(method, dict) else {"name": method}
    if method_cfg["name"] in ("lora", "dora", "rslora", "qlora"):
        method_cfg = {"r": 8, "alpha": 16, "dropout": 0.0, **method_cfg}
    speed = {key: training.pop(key) for key in list(training) if key in SpeedConfig.model_fields}
    switches = {key: training.pop(key) for key in list(training) if key in SPEED_SWITCHES}
    return validate_config({
        "model": {"name_or_path": str(model_dir)},
        "method": method_cfg,
        "data": {"train": [{"path": STORIES_DATA}], "template": "alpaca_en", "max_length": 128, **(data or {})},
        "training": {"output_dir": str(out_dir), "max_steps": 12, "batch_size": 8, "learning_rate": 5e-3,
                     "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0, "tensorboard": False,
                     "lr_scheduler": "constant", **training},
        "speed": {**speed, "switches": switches},
    })


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def tokens_seen(run_dir):
    return [json.loads(line)["tokens"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]


def first_last(values):
    k = max(1, len(values) // 4)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def batch(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok(["### Instruction:\nTell me what Tom saw.\n\n### Response:\nTom saw"], return_tensors="pt")


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "full"])
def test_loss_falls_on_stories260k_and_run_folder_is_complete(stories_dir, tmp_path, method):
    result = train(make_config(stories_dir, tmp_path / "run", method))
    start, end = first_last(losses(tmp_path / "run"))
    assert end < start * 0.8, (start, end)
    run = tmp_path / "run"
    for name in ("tunesmith_run.json", "config.yaml", "metrics.jsonl", "loss.png", "README.md", "tokenizer.json"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "tunesmith_run.json").read_text())
    assert meta["template"] == "alpaca_en" and meta["method"]["name"] == method
    if method == "full":
        assert meta["artifact"] == "full" and (run / "model.safetensors").is_file()
        assert result.trainable_params == result.total_params
        AutoModelForCausalLM.from_pretrained(run)
    else:
        assert meta["artifact"] == "adapter" and (run / "adapter_model.safetensors").is_file()
        assert 0 < result.trainable_params < result.total_params * 0.5


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_tiny_architectures_learn_and_reload_in_plain_peft(tiny_model_factory, tmp_path, arch):
    model_dir = tiny_model_factory(arch)
    run = tmp_path / "run"
    train(make_config(model_dir, run, {"name": "lora", "target_modules": "all-linear"}, max_steps=20,
                      learning_rate=1e-2))
    start, end = first_last(losses(run))
    assert end < start, (start, end)

    # Reference: base + adapter through PEFT alone, nothing from tunesmith.
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, run).eval()
    inputs = batch(model_dir)
    with torch.no_grad():
        logits = peft_model(**inputs).logits
    base_only = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert not torch.allclose(base_only(**inputs).logits, logits), "adapter had no effect"

    merged_dir = export_run(str(run), str(tmp_path / "merged"), merge=True)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (merged(**inputs).logits - logits).abs().max().item()
    assert diff <= 1e-4, diff
    assert not any(k.endswith(("lora_A.weight", "lora_B.weight")) for k in merged.state_dict())


def test_saved_adapter_reproduces_training_model_logits(stories_dir, tmp_path):
    captured = {}

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            model.eval()
            with torch.no_grad():
                captured["logits"] = model(**batch(stories_dir)).logits.clone()

    train(make_config(stories_dir, tmp_path / "run"), extra_callbacks=[Capture()])
    base = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run").eval()
    with torch.no_grad():
        logits = reloaded(**batch(stories_dir)).logits
    assert torch.equal(logits, captured["logits"])


def test_qlora_trains_on_cpu_with_nf4_double_quant(stories_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    run = tmp_path / "run"
    train(make_config(stories_dir, run, {"name": "qlora", "target_modules": "attention"}, max_steps=16))
    start, end = first_last(losses(run))
    assert end < start, (start, end)
    meta = json.loads((run / "tunesmith_run.json").read_text())
    assert meta["method"]["quant_type"] == "nf4" and meta["method"]["double_quant"] is True
    adapter = load_file(run / "adapter_model.safetensors")
    assert adapter and all(".self_attn." in k for k in adapter)


def test_qlora_gradients_are_the_same_after_an_evaluation(stories_dir, tmp_path):
    """bitsandbytes repacks a 4-bit layer for its AVX512-BF16 inference kernel when it runs in eval mode without
    grad (Trainer's evaluation) and keeps it so until a checkpoint is saved; a repacked layer passes no gradient to
    its input. The steps after an evaluation must get the gradients they would have got without it. Widths of 128
    and 256 are ones it can repack (one it cannot tile, such as stories260K's 172, made it crash instead)."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    def gradient_norms(eval_steps: int) -> list[float]:
        norms = []

        class Watch(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                norms.append(sum(p.grad.norm().item() for n, p in model.named_parameters() if "layers.0." in n
                                 and p.grad is not None))

        # save_steps stays 100: a checkpoint's save undoes the repacking, which hid the fault at the defaults
        train(make_config(tmp_path / "model", tmp_path / f"run{eval_steps}", {"name": "qlora"},
                          data={"val_size": 0.1}, max_steps=5, eval_steps=eval_steps), extra_callbacks=[Watch()])
        return norms

    evaluated, plain = gradient_norms(2), gradient_norms(100)
    assert len(evaluated) == 5 and evaluated == pytest.approx(plain, rel=1e-3), (evaluated, plain)


class Crash(TrainerCallback):
    """Simulates the process dying right after a checkpoint was written."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_killed_run_resumes_to_the_same_weights(stories_dir, tmp_path, method):
    opts = dict(max_steps=8, save_steps=3, learning_rate=3e-3, lr_scheduler="cosine", warmup_ratio=0.1)
    straight = tmp_path / "straight"
    train(make_config(stories_dir, straight, method, **opts))

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(make_config(stories_dir, resumed, method, **opts), extra_callbacks=[Crash(at_step=7)])
    assert (resumed / "checkpoints" / "checkpoint-6").is_dir()
    # A checkpoint half-written when the process died must be ignored.
    broken = resumed / "checkpoints" / "checkpoint-7"
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{\"global_st")
    train(make_config(stories_dir, resumed, method, **opts), resume=True)

    name = "adapter_model.safetensors" if method != "full" else "model.safetensors"
    a, b = load_file(straight / name), load_file(resumed / name)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert not broken.exists()


def test_packing_keeps_samples_apart_and_matches_padded_training(stories_dir, tmp_path):
    from tunesmith.data.collator import make_collator
    from tunesmith.data.dataset import build_datasets
    from tunesmith.data.templates.registry import get_template
    from tunesmith.models.loading import load_tokenizer

    def config(name, packing):
        cfg = make_config(stories_dir, tmp_path / name, max_steps=3, group_by_length=False, batch_size=4)
        cfg.data.packing = packing
        return cfg

    tokenizer = load_tokenizer(config("x", True).model)
    data = build_datasets(config("x", True).data, tokenizer, get_template("alpaca_en", tokenizer))
    rows = [{k: data.train[i][k] for k in ("input_ids", "labels")} for i in range(4)]
    packed = make_collator(tokenizer, packing=True)(rows)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
    assert "attention_mask" not in packed

    train(config("packed", True))
    train(config("padded", False))
    # Same batches, same supervised tokens: equal losses only if packed samples never attend to each other.
    packed_losses, padded_losses = losses(tmp_path / "packed"), losses(tmp_path / "padded")
    assert len(packed_losses) == len(padded_losses) == 3
    for a, b in zip(packed_losses, padded_losses):
        assert abs(a - b) < 1e-3, (packed_losses, padded_losses)
    # Tokens seen count every real token either way, EOS included (it is the pad id of this tokenizer).
    assert tokenizer.eos_token_id in rows[0]["input_ids"]
    assert tokens_seen(tmp_path / "packed") == tokens_seen(tmp_path / "padded") > 0


def test_packing_auto_packs_only_where_attention_computes_each_sample_alone(tmp_path, caplog):
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    from tunesmith.compat import set_attention_implementation
    from tunesmith.recipes.sft import _resolve_packing

    from .conftest import _tiny_config

    class NoPositions(torch.nn.Module):
        def forward(self, input_ids, labels=None):
            return input_ids

    llama = AutoModelForCausalLM.from_config(_tiny_config("llama", 64))
    prompt_tuned = get_peft_model(AutoModelForCausalLM.from_config(_tiny_config("llama", 64)),
                                  PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    cfg = make_config("x/y", tmp_path)
    assert cfg.data.packing == "auto"
    chosen = lambda model, kernel, config=cfg: _resolve_packing(
        config, model, "the CPU causal kernel" if kernel else None).data.packing
    with caplog.at_level("INFO", logger="tunesmith"):
        assert chosen(llama, kernel=True) is True
    assert "packing: each batch's samples in one row" in caplog.text
    assert chosen(llama, kernel=False) is False  # SDPA would compute each packed row's whole square
    for flash in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2"):  # varlen on GPU
        flash_llama = AutoModelForCausalLM.from_config(_tiny_config("llama", 64))
        set_attention_implementation(flash_llama.config, flash)  # the name is all that decides; no FlashAttention
        with caplog.at_level("INFO", logger="tunesmith"):
            assert chosen(flash_llama, kernel=False) is True, flash
        assert chosen(get_peft_model(flash_llama, LoraConfig(task_type="CAUSAL_LM", r=2)), kernel=False) is True
    assert "attending only within each sample on varlen FlashAttention" in caplog.text
    assert chosen(prompt_tuned, kernel=True) is False  # virtual tokens would land inside the packed row
    assert chosen(NoPositions(), kernel=True) is False  # nothing would keep the samples apart
    for explicit in (True, False):
        assert chosen(llama, kernel=not explicit, config=make_config("x/y", tmp_path, data={"packing": explicit})) \
            is explicit
    # auto never trips the checks that an explicit `packing: true` must pass
    validate_config({"model": {"name_or_path": "x/y", "attn_implementation": "paged|sdpa"},
                     "data": {"train": [{"path": "a.json"}]}, "method": {"name": "prefix"}})


def test_gradient_checkpointing_gives_the_same_update(stories_dir, tmp_path):
    train(make_config(stories_dir, tmp_path / "plain", max_steps=3))
    train(make_config(stories_dir, tmp_path / "ckpt", max_steps=3, gradient_checkpointing=True))
    a = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ckpt" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_validation_early_stopping_rotation_and_logs(stories_dir, tmp_path):
    cfg = make_config(stories_dir, tmp_path / "run", data={"val_size": 0.25}, max_steps=60, save_steps=2,
                      eval_steps=2, early_stopping_patience=1, save_total_limit=2, learning_rate=5e-2,
                      tensorboard=True)
    result = train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) >= 2
    assert result.metrics["global_step"] < 60 if "global_step" in result.metrics else records[-1]["step"] < 60
    assert len(list((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))) <= 2
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    meta = json.loads((tmp_path / "run" / "tunesmith_run.json").read_text())
    assert meta["data"]["validation_samples"] == 16 and "eval_loss" in meta["metrics"]


def test_long_prompts_are_truncated_and_unlearnable_samples_dropped(stories_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    rows = [{"instruction": "Tell me what Tom saw. " * 40, "output": "Tom saw a dog."},
            {"instruction": "Tell me what Ben saw.", "output": "Ben saw a cat."}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = make_config(stories_dir, tmp_path / "run", max_steps=2, batch_size=2)
    cfg.data.train[0].path = str(data)
    cfg.data.max_length = 64
    result = train(cfg)
    assert result.data_stats["truncated"] == 1 and result.data_stats["dropped_no_label"] == 0
    assert result.data_stats["train_samples"] == 2


def test_the_held_out_set_is_evaluated_once_at_the_end(stories_dir, tmp_path):
    """transformers evaluates at the last step; the recipe reuses those numbers instead of a second pass."""
    passes = []

    class Count(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            passes.append((state.global_step, metrics["eval_loss"]))

    result = train(make_config(stories_dir, tmp_path / "run", data={"val_size": 0.2}, max_steps=3, eval_steps=2),
                   extra_callbacks=[Count()])
    assert [step for step, _ in passes] == [2, 3]
    assert result.metrics["eval_loss"] == passes[-1][1]


def test_the_optimizer_auto_picks_per_device():
    """`training.optimizer: auto`: torch's fused AdamW on a GPU (one kernel for every tensor), plain AdamW on CPU,
    the paged one for QLoRA on a GPU; an explicit adamw follows the same device rule."""
    from tunesmith.training.arguments import choose_optimizer

    lora, qlora = make_config("x/y", "unused"), make_config("x/y", "unused", method="qlora")
    assert choose_optimizer(lora, cuda=True) == "adamw_torch_fused"
    assert choose_optimizer(lora, cuda=False) == "adamw_torch"
    assert choose_optimizer(qlora, cuda=True) == "paged_adamw_32bit"
    assert choose_optimizer(qlora, cuda=False) == "adamw_torch"
    explicit = make_config("x/y", "unused", optimizer="adamw")
    assert choose_optimizer(explicit, cuda=True) == "adamw_torch_fused"
    assert choose_optimizer(make_config("x/y", "unused", optimizer="sgd"), cuda=True) == "sgd"


def test_the_model_cards_python_snippet_runs_as_written(stories_dir, tmp_path, monkeypatch):
    """A run from a tunesmith alias (a model shipped on PyPI: here one that resolves to stories260K) writes a card
    whose snippet names the folder the base was loaded from, not the alias, and runs as is, in a fresh Python
    without tunesmith, from another folder: the adapter loads onto that base."""
    import re
    import subprocess
    import sys

    import tunesmith.models.pypi_models as pypi_models

    monkeypatch.setattr(pypi_models, "ensure_pypi_model", lambda name, **kwargs: stories_dir)
    cfg = make_config("smollm2-135m-instruct", tmp_path / "run", max_steps=1)
    assert cfg.model.name_or_path == "smollm2-135m-instruct"
    train(cfg)
    card = (tmp_path / "run" / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 1
    snippet = snippets[0]
    assert "'smollm2-135m-instruct'" not in snippet and repr(str(stories_dir.resolve())) in snippet
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = snippet + ("\nimport sys\nassert not any(name.startswith('tunesmith') for name in sys.modules)\n"
                       "print(type(model).__name__, sum(p.numel() for n, p in model.named_parameters() if 'lora_' in n))")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=elsewhere, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, lora_parameters = proc.stdout.split()[-2:]
    assert name == "PeftModelForCausalLM" and int(lora_parameters) > 0


def test_the_card_snippet_keeps_a_hub_id_and_loads_a_full_run_directly(tmp_path):
    """A hub id is what from_pretrained takes as is (with its revision); a full run is a whole model: no PEFT."""
    from tunesmith.training.model_card import python_snippet

    cfg = make_config("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path / "run")
    cfg.model.revision = "main"
    adapter = "\n".join(python_snippet(cfg, "adapter", "AutoModelForCausalLM"))
    assert "from_pretrained('HuggingFaceTB/SmolLM2-135M-Instruct', revision='main')\n" in adapter
    assert f"PeftModel.from_pretrained(base, {str((tmp_path / 'run').resolve())!r})" in adapter
    full = "\n".join(python_snippet(cfg, "full", "AutoModelForCausalLM"))
    assert "peft" not in full and f"AutoModelForCausalLM.from_pretrained({str((tmp_path / 'run').resolve())!r})" in full
    assert python_snippet(cfg, "bottleneck", "AutoModelForCausalLM") == []  # only tunesmith loads those
