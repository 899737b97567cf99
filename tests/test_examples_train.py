"""Every method `tunesmith methods` lists has an example config in examples/, and that example trains.

Each example is trained as written except for what keeps it small: the tiny real stories260K model instead of
SmolLM2, 2 steps of batch 2 on 8 samples per dataset, no validation split, and `alpaca_en` where the example uses
the model's own chat template (stories260K has none). Its artifact must then load the way docs/methods.md says:
PEFT adapters with plain `PeftModel.from_pretrained`, full models with `AutoModelForCausalLM`, bottleneck adapters
(tunesmith's own format) and the hybrid through tunesmith, and every run through `load_for_inference` (what
`tunesmith chat` uses). Method options and settings not overridden must reach the run's config.yaml unchanged.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.config.loading import load_config
from tunesmith.methods.registry import all_methods
from tunesmith.models.loading import load_for_inference
from tunesmith.recipes import train

from .conftest import EXAMPLES, ROOT, require_shared

METHODS = sorted(all_methods())
# The reference chapter's QLoRA workflow is the qlora example.
EXAMPLE_OF = {"qlora": "qlora_zh.yaml"}
PROBE = "### Instruction:\nTell me what Tom saw.\n\n### Response:\nTom saw"


def example_for(method: str):
    return EXAMPLES / EXAMPLE_OF.get(method, f"{method}.yaml")


def test_every_listed_method_has_an_example_config():
    missing = [m for m in METHODS if not example_for(m).is_file()]
    assert not missing, f"methods without an example config: {missing}"
    for method in METHODS:
        assert load_config(example_for(method)).method.name == method


def small_overrides(example, model_dir, out_dir) -> list[str]:
    data = yaml.safe_load(example.read_text(encoding="utf-8"))["data"]
    overrides = [f"model.name_or_path={model_dir}", f"training.output_dir={out_dir}", "training.max_steps=2",
                 "training.batch_size=2", "training.grad_accum=1", "training.logging_steps=1",
                 "training.save_steps=100", "training.tensorboard=false", "training.early_stopping_patience=null",
                 "data.val_size=0", f"data.max_length={min(data.get('max_length', 1024), 256)}"]
    overrides += [f"data.train.{i}.max_samples=8" for i in range(len(data["train"]))]
    if data.get("template", "auto") in ("auto", "model"):
        overrides.append("data.template=alpaca_en")
    return overrides


@pytest.fixture(scope="module")
def trained(stories_dir, tmp_path_factory):
    """method -> (example, run folder, resolved config), each example trained once per module."""
    runs = {}

    def run(method):
        if method not in runs:
            if method == "qlora":
                pytest.importorskip("bitsandbytes")
            require_shared()
            example = example_for(method)
            out = tmp_path_factory.mktemp(method) / "run"
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(ROOT)  # the examples' data paths are relative to the repository root
                cfg = load_config(example, small_overrides(example, stories_dir, out))
                train(cfg)
            runs[method] = example, out, cfg
        return runs[method]

    return run


def last_logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(PROBE, return_tensors="pt")).logits[0, -1].float()


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_example_trains_and_its_artifact_loads(trained, stories_dir, method):
    example, run, cfg = trained(method)
    meta = json.loads((run / "tunesmith_run.json").read_text(encoding="utf-8"))
    assert meta["method"]["name"] == method
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    written = yaml.safe_load(example.read_text(encoding="utf-8"))
    assert {k: saved["method"][k] for k in written["method"]} == written["method"]
    for key in ("learning_rate", "max_grad_norm", "lr_scheduler", "warmup_ratio"):
        if key in written["training"]:
            assert saved["training"][key] == written["training"][key], key

    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    base = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32).eval()
    before = last_logits(base, tokenizer)

    artifact = meta["artifact"]
    if artifact == "adapter":
        assert (run / "adapter_config.json").is_file() and (run / "adapter_model.safetensors").is_file()
        model = PeftModel.from_pretrained(base, run).eval()
    elif artifact == "full":
        assert (run / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32).eval()
    elif artifact == "bottleneck":
        # tunesmith's own format: safetensors weights plus a JSON config; tunesmith reattaches them.
        assert load_file(run / "bottleneck_adapters.safetensors")
        assert json.loads((run / "bottleneck_config.json").read_text())["placement"] == method
        model = load_for_inference(str(run), dtype="float32").model
    elif artifact == "hybrid":
        # Its LoRA and soft-prompt parts are ordinary PEFT folders; the bottleneck part is tunesmith's format.
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(stories_dir), run / "lora")
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(stories_dir), run / "prompt")
        assert load_file(run / "bottleneck_adapters.safetensors")
        model = load_for_inference(str(run), dtype="float32").model
    else:
        pytest.fail(f"{method}: unknown artifact kind {artifact!r}")
    assert not torch.equal(last_logits(model, tokenizer), before), "the trained artifact changes nothing"
    # What `tunesmith chat` / `generate` load, for every kind.
    loaded = load_for_inference(str(run), dtype="float32")
    assert loaded.template_name == cfg.data.template


@pytest.mark.slow
def test_qlora_zh_follows_the_reference_recipe_and_loads_in_plain_peft(trained, stories_dir):
    """examples/qlora_zh.yaml keeps the chapter's QLoRA settings (clipping at 0.3 among them) through training,
    and its adapter loads with PEFT alone."""
    _, run, _ = trained("qlora")
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["training"]["max_grad_norm"] == 0.3
    assert saved["method"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (saved["method"]["r"], saved["method"]["alpha"], saved["method"]["dropout"]) == (16, 32, 0.05)
    assert saved["method"]["quant_type"] == "nf4" and saved["method"]["double_quant"] is True
    assert saved["data"]["template"] == "alpaca_zh"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(stories_dir), run)
    assert any("lora_" in name for name, _ in model.named_parameters())
    adapter = load_file(run / "adapter_model.safetensors")
    assert {k.split(".")[-3] for k in adapter} == {"q_proj", "k_proj", "v_proj", "o_proj"}
