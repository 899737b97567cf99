"""Speed and memory options: logits only at supervised positions, CPU threads, and the GPU switches' wiring."""

from __future__ import annotations

import os

import pytest
import torch

from tunesmith.config.loading import validate_config
from tunesmith.errors import ConfigError
from tunesmith.hardware import cpu_model, native_bf16_cpu, physical_cores
from tunesmith.runtime import Runtime
from tunesmith.speed.apply import configure_process
from tunesmith.speed.plan import resolve_speed_plan
from tunesmith.training.arguments import build_training_arguments
from tunesmith.speed.logits import supports_supervised_logits
from tunesmith.training.trainer import TunesmithTrainer, next_token_mask, supervised_loss


def _config(tmp_path, **speed):
    return validate_config({"model": {"name_or_path": "x"}, "data": {"train": [{"path": "d.json"}]},
                            "training": {"output_dir": str(tmp_path)}, "speed": speed})


def _arguments(cfg, compute_dtype=torch.float32, device="cpu"):
    """build_training_arguments as a run on `device` calls it."""
    runtime = Runtime(device, compute_dtype, torch.float32, None)
    return build_training_arguments(cfg, runtime=runtime, speed=resolve_speed_plan(cfg, device, cpu_threads=1),
                                    has_validation=False)


def _threads(cfg) -> int:
    configure_process(resolve_speed_plan(cfg, "cpu", cpu_threads=physical_cores()))
    return torch.get_num_threads()


@pytest.fixture
def tiny_llama(tiny_model_factory):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"), dtype=torch.float32)


def _batches():
    torch.manual_seed(1)
    ids = torch.randint(3, 200, (3, 12))
    labels = ids.clone()
    labels[0, :5] = labels[1, :3] = -100          # prompts
    labels[2, 9:] = -100                          # padding
    packed_ids = torch.randint(3, 200, (1, 15))
    packed_labels = packed_ids.clone()
    packed_labels[0, [0, 1, 6, 7, 8]] = -100      # each sample's prompt; position 6 starts the second sample
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8]])
    return [{"input_ids": ids, "labels": labels},
            {"input_ids": packed_ids, "labels": packed_labels, "position_ids": positions}]


@pytest.mark.parametrize("which", [0, 1], ids=["padded", "packed"])
def test_supervised_logits_give_the_same_loss_and_gradients(tiny_llama, which):
    batch = _batches()[which]
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    full = tiny_llama(**batch, num_items_in_batch=n_items).loss   # transformers' own causal-LM loss
    full.backward()
    expected = {name: p.grad.clone() for name, p in tiny_llama.named_parameters()}
    tiny_llama.zero_grad()

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    outputs = tiny_llama(**inputs, logits_to_keep=next_token_mask(batch["labels"]))
    assert outputs.logits.shape[0] == n_items < batch["labels"].numel()  # only the supervised positions
    loss = supervised_loss(outputs, batch["labels"], num_items_in_batch=n_items)
    loss.backward()
    assert torch.allclose(loss, full, atol=1e-5)
    for name, p in tiny_llama.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-5), name


def test_next_token_mask_marks_positions_before_each_trained_token():
    labels = torch.tensor([[-100, -100, 7, 8, -100, 9]])
    assert next_token_mask(labels).tolist() == [[False, True, True, False, True, False]]


def test_trainer_with_supervised_logits_matches_plain_trainer(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    assert supports_supervised_logits(model)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    batch = _batches()[0]
    ours = TunesmithTrainer(model=model, args=args, supervised_logits=True)
    plain = Trainer(model=model, args=args)
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    loss, outputs = ours.compute_loss(model, dict(batch), return_outputs=True, num_items_in_batch=n_items)
    assert outputs.logits.dim() == 2 and ours.supervised_logits  # the mask path was used, and kept
    assert torch.allclose(loss, plain.compute_loss(model, dict(batch), num_items_in_batch=n_items), atol=1e-5)


def test_prompt_learning_keeps_full_logits(tiny_llama):
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(tiny_llama, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert not supports_supervised_logits(model)


def test_cpu_threads_default_to_physical_cores(tmp_path):
    before = torch.get_num_threads()
    try:
        assert _threads(_config(tmp_path)) == physical_cores()
        assert _threads(_config(tmp_path, cpu_threads=1)) == 1
    finally:
        torch.set_num_threads(before)


def test_more_threads_than_cpus_is_a_config_error(tmp_path):
    from tunesmith.hardware import usable_cpus

    with pytest.raises(ConfigError, match=f"more than the {usable_cpus()} CPUs") as error:
        resolve_speed_plan(_config(tmp_path, cpu_threads=usable_cpus() + 1), "cpu")
    assert error.value.where == "speed.cpu_threads"
    assert resolve_speed_plan(_config(tmp_path, cpu_threads=usable_cpus() + 1), "cuda").cpu_threads is None


@pytest.mark.parametrize("speed", [{"loss": "liger"}, {"activation_offload": True}], ids=["liger", "offload"])
def test_gpu_only_options_on_cpu_are_config_errors(tmp_path, speed):
    with pytest.raises(ConfigError) as error:
        resolve_speed_plan(_config(tmp_path, **speed), "cpu")
    assert error.value.where == f"speed.{next(iter(speed))}" and "GPU" in error.value.message


def test_flex_attention_cannot_train_on_cpu(tmp_path):
    cfg = _config(tmp_path)
    cfg.model.attn_implementation = "flex_attention"
    with pytest.raises(ConfigError, match="FlexAttention has no backward on CPU") as error:
        resolve_speed_plan(cfg, "cpu")
    assert error.value.where == "model.attn_implementation"


def test_gpu_options_reach_training_arguments(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else None)
    liger = resolve_speed_plan(_config(tmp_path, loss="liger", torch_compile=True), "cuda")  # no error on a GPU
    assert liger.liger and not liger.supervised_logits and liger.torch_compile
    monkeypatch.undo()
    args = _arguments(_config(tmp_path, torch_compile=True))
    assert args.torch_compile and not args.use_liger_kernel


@pytest.mark.parametrize("key, hint", [("chunked_loss", "speed.loss"), ("liger_kernel", "speed.loss: liger"),
                                       ("cpu_threads", "speed.cpu_threads"),
                                       ("fast_rms_norm", "speed.switches.fast_rms_norm")])
def test_old_speed_keys_say_where_they_went(tmp_path, key, hint):
    with pytest.raises(ConfigError, match="renamed") as error:
        validate_config({"model": {"name_or_path": "x"}, "data": {"train": [{"path": "d.json"}]},
                         "training": {key: False}})
    assert error.value.where.endswith(f"training.{key}") and hint in error.value.hint


def test_speed_plan_reads_the_three_user_choices(tmp_path):
    default = resolve_speed_plan(_config(tmp_path), "cpu", cpu_threads=2)
    assert default.loss == "chunked" and default.supervised_logits and default.chunked_loss
    assert default.cpu_threads == 2 and default.fast_rms_norm and default.skip_padding_mask
    assert not resolve_speed_plan(_config(tmp_path, loss="full"), "cpu").supervised_logits
    supervised = resolve_speed_plan(_config(tmp_path, loss="supervised"), "cpu")
    assert supervised.supervised_logits and not supervised.chunked_loss
    off = resolve_speed_plan(_config(tmp_path, cpu_kernels="off"), "cpu")
    assert not (off.fast_rms_norm or off.fast_dropout or off.sdpa_gqa or off.cpu_causal_attention
                or off.half_frozen_base) and off.skip_padding_mask  # not a CPU kernel
    one = resolve_speed_plan(_config(tmp_path, cpu_kernels="off", switches={"sdpa_gqa": True}), "cpu")
    assert one.sdpa_gqa and not one.fast_rms_norm
    with pytest.raises(ConfigError, match="unknown speed switch turbo"):
        _config(tmp_path, switches={"turbo": True})


def test_tokenised_data_is_cached_by_fingerprint(tmp_path, stories_dir, monkeypatch):
    import json

    from transformers import AutoTokenizer

    import datasets

    import tunesmith.data.dataset as dataset
    from tunesmith.config.schema import DataConfig
    from tunesmith.data.cache import fingerprint
    from tunesmith.data.templates import get_template

    tok = AutoTokenizer.from_pretrained(stories_dir)
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"A{i}"}) + "\n" for i in range(12)))
    cfg = DataConfig(train=[{"path": str(data)}], val_size=2, template="chatml", max_length=64)
    template = get_template("chatml", tok)
    first = dataset.build_datasets(cfg, tok, template, cache_root=tmp_path / "cache")

    def no_rebuild(*args):
        raise AssertionError("tokenised again although nothing changed")

    monkeypatch.setattr(dataset, "_build", no_rebuild)
    again = dataset.build_datasets(cfg, tok, template, cache_root=tmp_path / "cache")
    assert again.stats["cached"] and again.train["input_ids"] == first.train["input_ids"]
    assert again.validation["labels"] == first.validation["labels"]
    assert {k: v for k, v in again.stats.items() if k != "cached"} == first.stats

    monkeypatch.undo()  # a changed file, max_length or template is a new key: built afresh
    data.write_text(data.read_text() + json.dumps({"instruction": "Say x", "output": "Ax"}) + "\n")
    changed = dataset.build_datasets(cfg, tok, template, cache_root=tmp_path / "cache")
    assert "cached" not in changed.stats and changed.stats["train_samples"] == 11

    # Another datasets version may not read the Arrow files this one wrote: its own key.
    key = fingerprint(cfg, tok, template)
    monkeypatch.setattr(datasets, "__version__", datasets.__version__ + ".other")
    assert fingerprint(cfg, tok, template) not in (key, None)


def test_activation_offload_wraps_the_forward_in_save_on_cpu(tiny_llama, tmp_path, monkeypatch):
    import contextlib

    from transformers import TrainingArguments

    entered = []

    @contextlib.contextmanager
    def recording(pin_memory=False):
        entered.append(pin_memory)
        yield

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", recording)  # the real one needs CUDA to pin memory
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = TunesmithTrainer(model=tiny_llama, args=args, activation_offload=True)
    tiny_llama.train()
    with trainer.compute_loss_context_manager():
        pass
    tiny_llama.eval()
    with trainer.compute_loss_context_manager():  # evaluation keeps nothing for backward: nothing to offload
        pass
    assert entered == [True]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_bf16_on_cpu_is_autocast(tmp_path):
    args = _arguments(_config(tmp_path), torch.bfloat16)
    assert args.bf16 and args.use_cpu  # transformers autocasts to bf16 on CPU only with both
    fp32 = _arguments(_config(tmp_path), torch.float32)
    assert not fp32.bf16 and not fp32.use_cpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_cpu_keeps_an_fp32_base_under_bf16_autocast():
    from tunesmith.models.loading import training_load_dtype

    assert training_load_dtype(True, torch.bfloat16) == torch.float32  # adapters: fp32 base on CPU
    assert training_load_dtype(False, torch.bfloat16) == torch.float32  # full: fp32 master weights


def test_native_bf16_cpu_reads_the_flags():
    amx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert native_bf16_cpu(amx) == "amx_bf16"
    assert native_bf16_cpu("flags\t\t: fpu avx512f avx512_bf16\n") == "avx512_bf16"
    assert native_bf16_cpu("flags\t\t: fpu sse2 avx2\n") is None and native_bf16_cpu("") is None


def test_cpu_model_names_the_cpu_and_its_bf16_unit():
    epyc = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512f avx512_bf16\n"
    assert cpu_model(epyc) == "AMD EPYC 9R14 (avx512_bf16)"
    assert cpu_model("model name\t: Old Xeon\nflags\t\t: fpu avx2\n") == "Old Xeon (no native bf16)"
    assert cpu_model("").endswith("(no native bf16)")  # no /proc/cpuinfo: platform's name, never an error


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_auto_precision_is_bf16_autocast_only_on_cpus_with_native_bf16(monkeypatch):
    import tunesmith.models.loading as loading
    from tunesmith.planning.memory import PlanRequest

    # AVX512-BF16 without AMX: 1.9x the fp32 speed on an AMD EPYC, same held-out loss (docs/benchmarks.md).
    for flag, expected in (("amx_bf16", torch.bfloat16), ("avx512_bf16", torch.bfloat16), (None, torch.float32)):
        monkeypatch.setattr(loading, "native_bf16_cpu", lambda flag=flag: flag)
        assert loading.training_compute_dtype("auto") == expected, flag
        assert PlanRequest(device="cpu").compute_dtype() == expected  # the planner counts the same
        assert loading.training_compute_dtype("float32") == torch.float32  # an explicit choice wins
    assert loading.resolve_dtype("auto") == torch.float32  # inference on CPU stays fp32


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_auto_precision_keeps_fp32_for_methods_whose_gradients_bf16_spoils(amx_cpu):
    import tunesmith.models.loading as loading
    from tunesmith.methods.registry import all_methods, get_method
    from tunesmith.planning.memory import PlanRequest

    from tunesmith.planning.params import method_options

    # benchmarks/bf16_gradients.py: prefix 0.59 relative gradient error, P-tuning v2 from random prefixes 2.3; the
    # rest (P-tuning v2 from its default text included) <= 0.10.
    assert {name for name in all_methods() if not get_method(name).bf16_autocast_safe(method_options(name))} == \
        {"prefix"}
    assert not get_method("ptuning_v2").bf16_autocast_safe(method_options("ptuning_v2", {"init_text": None}))
    assert loading.training_compute_dtype("auto", bf16_safe=False) == torch.float32
    assert loading.training_compute_dtype("auto", bf16_safe=True) == torch.bfloat16
    assert loading.training_compute_dtype("bfloat16", bf16_safe=False) == torch.bfloat16  # an explicit choice wins
    for method, options, expected in (("prefix", {}, torch.float32), ("ptuning_v2", {"init_text": None}, torch.float32),
                                      ("ptuning_v2", {}, torch.bfloat16), ("lora", {}, torch.bfloat16),
                                      ("prompt", {}, torch.bfloat16)):
        request = PlanRequest(method=method, method_options=options, device="cpu")
        assert request.compute_dtype() == expected, (method, options)  # the planner counts the same


def test_bf16_gradients_benchmark_measures_against_float64(stories_dir):
    """benchmarks/bf16_gradients.py, the evidence behind `bf16_autocast_safe`: its float32 column must sit at
    rounding level and its bf16 column well above it, or the comparison is broken."""
    import argparse
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bf16_gradients.py"
    spec = importlib.util.spec_from_file_location("bf16_gradients", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(model=str(stories_dir), data=module.DEFAULT_DATA, samples=2, max_length=64,
                              init_text=None)
    row = module.measure("ptuning_v2", args)
    assert row["fp32"]["rel_error"] < 1e-4 and row["fp32"]["cosine"] > 0.9999
    assert 1e-3 < row["bf16"]["rel_error"] < 0.2 and row["bf16_autocast_safe"]  # from its default text
    args.init_text = "none"
    assert not module.measure("ptuning_v2", args)["bf16_autocast_safe"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_prefix_tuning_trains_in_fp32_under_auto_and_warns_when_forced(stories_dir, tmp_path, amx_cpu, dtype):
    from transformers import TrainerCallback

    from tunesmith.recipes import train

    from .conftest import run_log
    from .test_training import make_config

    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["bf16"] = args.bf16

    cfg = make_config(stories_dir, tmp_path / "run", method="prefix", max_steps=2)
    cfg.model.dtype = dtype
    train(cfg, extra_callbacks=[Capture()])
    text = run_log(tmp_path / "run")
    if dtype == "auto":
        assert seen["bf16"] is False
        assert "precision: fp32 (model.dtype auto): prefix's gradients are far off under bf16" in text
        assert "WARNING tunesmith.user" not in text
    else:
        assert seen["bf16"] is True
        assert "WARNING tunesmith.user: prefix's gradients are far off under bfloat16" in text


def test_auto_precision_on_a_gpu_is_named_with_the_gpu(monkeypatch):
    """On a GPU the run log says what `auto` chose too (it said nothing there until the first GPU run showed it)."""
    from tunesmith.methods.registry import get_method
    from tunesmith.recipes import sft
    from tunesmith.runtime import resolve_runtime

    from .conftest import RecordingReporter

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a: True)
    cfg = validate_config({"model": {"name_or_path": "x"}, "method": {"name": "lora"},
                           "data": {"train": [{"path": "x.jsonl"}]}})
    reporter = RecordingReporter()
    sft._report_precision(cfg, get_method("lora"), resolve_runtime(cfg, get_method("lora")), reporter)
    assert reporter.lines == [("info", "precision: bfloat16 mixed precision on NVIDIA H200 (model.dtype auto); "
                                       "model.dtype: float32 trains in full fp32")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_auto_precision_on_an_amx_cpu_trains_under_bf16_autocast(stories_dir, tmp_path, amx_cpu):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, TrainerCallback

    from tunesmith.speed.cpu.causal_attention import sdpa_only
    from tunesmith.recipes import train

    from .conftest import run_log
    from .test_training import batch, first_last, losses, make_config

    seen = {}

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            seen["bf16"], seen["use_cpu"] = args.bf16, args.use_cpu
            model.eval()
            # SDPA, as the reloaded model below attends: the CPU causal kernel's bf16 rounding differs from it.
            with torch.no_grad(), sdpa_only():
                seen["logits"] = model(**batch(stories_dir)).logits.float()

    train(make_config(stories_dir, tmp_path / "run"), extra_callbacks=[Capture()])
    assert seen["bf16"] and seen["use_cpu"]
    assert "precision: bf16 autocast" in run_log(tmp_path / "run")
    start, end = first_last(losses(tmp_path / "run"))
    assert end < start * 0.8, (start, end)
    base = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = reloaded(**batch(stories_dir)).logits.float()
    assert torch.allclose(logits, seen["logits"], atol=1e-2), (logits - seen["logits"]).abs().max()


def _sdpa_key_heads(model, batch) -> set[int]:
    """The numbers of key/value heads SDPA received in a forward pass."""
    with torch.profiler.profile(record_shapes=True) as prof:
        model(**batch)
    return {event.input_shapes[1][1] for event in prof.events() if event.name == "aten::scaled_dot_product_attention"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_grouped_query_sdpa_keeps_loss_and_gradients(tiny_llama, monkeypatch, tmp_path, dtype):
    from tunesmith.speed.cpu.sdpa_gqa import GQA_VARIABLE

    monkeypatch.delenv(GQA_VARIABLE, raising=False)
    ids = torch.randint(3, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = mask[2, 5:] = 0                 # right padding: transformers builds a 4-D mask
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    results = {}
    for on in (False, True):
        _threads(_config(tmp_path, switches={"sdpa_gqa": on}))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            heads = _sdpa_key_heads(tiny_llama, batch)
            loss = tiny_llama(**batch).loss
        loss.backward()
        results[on] = loss.detach(), {n: p.grad.clone() for n, p in tiny_llama.named_parameters()}, heads
        tiny_llama.zero_grad()
    config = tiny_llama.config
    assert results[False][2] == {config.num_attention_heads}      # keys/values copied per query head
    assert results[True][2] == {config.num_key_value_heads}       # each group's own key/value head
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(results[True][0], results[False][0], atol=tolerance)
    for name, grad in results[False][1].items():
        assert torch.allclose(results[True][1][name], grad, atol=tolerance), name


def test_users_gqa_setting_wins(monkeypatch, tmp_path):
    import tunesmith.speed.cpu.sdpa_gqa as cpu_attention

    monkeypatch.setattr(cpu_attention, "_USERS_SETTING", "0")
    monkeypatch.setenv(cpu_attention.GQA_VARIABLE, "0")
    _threads(_config(tmp_path))
    assert os.environ[cpu_attention.GQA_VARIABLE] == "0"
