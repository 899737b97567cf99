"""speed.switches.half_frozen_base: frozen linear weights held in bf16 while adapters train under CPU bf16 autocast."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.methods.registry import all_methods, get_method
from tunesmith.planning.params import apply_method, method_options
from tunesmith.speed.frozen_base import frozen_linear_dtype, hold_frozen_linears, release

from .test_methods import METHOD_OPTIONS
from .test_training import batch, losses, make_config

# The methods it applies to (DoRA's exclusion is checked in test_where_it_applies).
HELD_METHODS = sorted(name for name, m in all_methods().items()
                      if frozen_linear_dtype(m, torch.bfloat16, cuda=False) is not None)


def test_where_it_applies():
    lora, dora, full = get_method("lora"), get_method("dora"), get_method("full")
    assert frozen_linear_dtype(lora, torch.bfloat16, cuda=False) == torch.bfloat16
    assert frozen_linear_dtype(lora, torch.float32, cuda=False) is None          # no autocast, no rounding
    assert frozen_linear_dtype(lora, torch.bfloat16, cuda=True) is None          # a GPU base loads in bf16 already
    assert frozen_linear_dtype(lora, torch.bfloat16, cuda=False, enabled=False) is None
    assert frozen_linear_dtype(dora, torch.bfloat16, cuda=False) is None         # its weight norm reads the base
    assert frozen_linear_dtype(full, torch.bfloat16, cuda=False) is None         # the artifact holds the base
    assert all(frozen_linear_dtype(m, torch.bfloat16, cuda=False) is None
               for m in all_methods().values() if m.artifact == "full")
    assert {"houlsby", "pfeiffer", "hybrid"} <= set(HELD_METHODS)  # their artifacts hold only the adapters


def _loss_and_grads(model, ids):
    torch.manual_seed(1)  # the same dropout draws for both models
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", HELD_METHODS)
def test_held_weights_give_autocasts_numbers_exactly(tiny_model_factory, name):
    """Every method it applies to: the same loss and adapter gradients, bit for bit, as autocast over the
    fp32 base (it multiplies with the same bf16 values), with the frozen matrices stored in half the bytes."""
    folder = tiny_model_factory("llama")
    opts = method_options(name, METHOD_OPTIONS.get(name))

    def build():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    plain, _ = apply_method(build, name, opts, torch.bfloat16)
    held_model, _ = apply_method(build, name, opts, torch.bfloat16)
    held = hold_frozen_linears(held_model, torch.bfloat16)
    if name == "qlora":  # its frozen matrices are already 4-bit; only the head is a plain linear layer, kept
        assert held == []
        return
    assert held and all(m.weight.dtype == torch.bfloat16 and not m.weight.requires_grad for m in held)
    assert held_model.get_output_embeddings().weight.dtype == torch.float32
    assert held_model.get_input_embeddings().weight.dtype == torch.float32
    plain.train(), held_model.train()
    ids = torch.randint(3, 200, (2, 24))
    loss, grads = _loss_and_grads(plain, ids)
    held_loss, held_grads = _loss_and_grads(held_model, ids)
    assert torch.equal(loss, held_loss)
    assert grads.keys() == held_grads.keys() and all(torch.equal(grads[k], held_grads[k]) for k in grads)

    release(held)  # back in fp32 with the values training multiplied with: the bf16-rounded originals
    originals = dict(plain.named_modules())
    for module_name, module in held_model.named_modules():
        if any(module is m for m in held):
            original = originals[module_name].weight
            assert module.weight.dtype == torch.float32
            assert torch.equal(module.weight, original.to(torch.bfloat16).float())


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_the_checkpoint_mapping_is_let_go(tmp_path, tiny_model_factory):
    """transformers maps an fp32 checkpoint loaded in fp32 and the weights alias it: unless every frozen tensor
    leaves the mapping, the fp32 originals stay resident beside their bf16 copies and nothing is saved."""
    folder = tmp_path / "fp32"
    AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"), dtype=torch.float32).save_pretrained(folder)
    file = folder / "model.safetensors"
    model, _ = apply_method(lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), "lora",
                            method_options("lora"), torch.bfloat16)
    gc.collect()
    if not _mapped(file):
        pytest.skip("this transformers version copies checkpoints on load")
    hold_frozen_linears(model, torch.bfloat16)
    gc.collect()
    assert not _mapped(file)


HOLD_PEAK = """
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from tunesmith.speed.frozen_base import hold_frozen_linears

def high_water():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).requires_grad_(False)
before = high_water()
held = hold_frozen_linears(model, torch.bfloat16)
print(high_water() - before, sum(m.weight.numel() for m in held))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_holding_does_not_first_read_the_whole_checkpoint_in(tmp_path):
    """The cast reads every fp32 original from the mapped checkpoint; each one's pages are let go once its bf16
    copy exists, so the process grows by about the bf16 copies, not by the fp32 originals plus the copies (which
    peaked above training itself for a 360M model)."""
    import subprocess
    import sys

    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=1000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=8)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)  # 128 MB of fp32 matrices
    out = subprocess.run([sys.executable, "-c", HOLD_PEAK, str(tmp_path)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout.split()
    growth, held = int(out[-2]), int(out[-1])
    assert held == 2 * (4 * 1024 * 1024 + 3 * 1024 * 4096)
    assert growth < 3 * held  # the bf16 copies (2 bytes each) and one original at a time, not 4 + 2 bytes each


def test_training_holds_them_and_changes_no_number(stories_dir, tmp_path, amx_cpu):
    """End to end under bf16 autocast (the default on AMX CPUs): the same losses as with the switch off, the run
    log says so, and the adapter loads with PEFT for fp32 inference."""
    from peft import PeftModel

    from tunesmith.recipes import train

    from .conftest import run_log

    runs = {}
    for switch in (True, False):
        run = tmp_path / f"held-{switch}"
        cfg = make_config(stories_dir, run, {"name": "lora", "dropout": 0.1}, max_steps=6, half_frozen_base=switch)
        train(cfg)
        runs[switch] = (losses(run), run_log(run))
    assert runs[True][0] == runs[False][0]
    assert "held in bfloat16" in runs[True][1] and "held in" not in runs[False][1]

    base = AutoModelForCausalLM.from_pretrained(stories_dir)
    model = PeftModel.from_pretrained(base, tmp_path / "held-True")
    with torch.no_grad():  # fp32 inference, no autocast
        assert torch.isfinite(model(**batch(stories_dir)).logits).all()


@pytest.mark.parametrize("name", ["houlsby", "hybrid"])
def test_tunesmith_adapters_train_held_and_reload(stories_dir, tmp_path, amx_cpu, name):
    """Bottleneck and hybrid runs hold the base too (their artifacts hold only the adapters): they train under bf16
    autocast and their run folder reloads for fp32 inference."""
    from tunesmith.models.loading import load_for_inference
    from tunesmith.recipes import train

    from .conftest import run_log

    run = tmp_path / name
    train(make_config(stories_dir, run, {"name": name, **METHOD_OPTIONS[name]}, max_steps=4))
    assert "held in bfloat16" in run_log(run) and len(losses(run)) == 4
    loaded = load_for_inference(str(run))
    with torch.no_grad():
        assert torch.isfinite(loaded.model(**batch(stories_dir)).logits).all()


@pytest.mark.parametrize("name", ["lora", "houlsby"])
def test_held_run_resumes_to_the_same_weights(stories_dir, tmp_path, amx_cpu, name):
    """Killed and resumed under bf16 autocast with the base held: the checkpoint (a PEFT adapter, or for bottleneck
    adapters the whole model with its held matrices) loads back into the held model and training ends where an
    uninterrupted run ends."""
    from safetensors.torch import load_file

    from tunesmith.methods.bottleneck_layers import WEIGHTS
    from tunesmith.recipes import train

    from .test_training import Crash

    method = {"name": name, **METHOD_OPTIONS[name]}
    opts = dict(max_steps=6, save_steps=3, learning_rate=3e-3)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(make_config(stories_dir, straight, method, **opts))
    with pytest.raises(KeyboardInterrupt):
        train(make_config(stories_dir, resumed, method, **opts), extra_callbacks=[Crash(at_step=4)])
    train(make_config(stories_dir, resumed, method, **opts), resume=True)
    file = "adapter_model.safetensors" if name == "lora" else WEIGHTS
    a, b = load_file(straight / file), load_file(resumed / file)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
