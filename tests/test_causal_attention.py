"""The CPU causal attention kernel (`speed.switches.cpu_causal_attention`): exact where it runs, SDPA everywhere else."""

from __future__ import annotations

import platform
import shutil

import pytest
import torch
import torch.nn.functional as F

from tunesmith.speed.cpu import causal_attention as ca

from .conftest import _tiny_config


@pytest.fixture(scope="module")
def kernel():
    problem = ca.build_problem()
    if problem:
        pytest.skip(f"causal attention kernel: {problem}")
    built = ca.load_kernel()
    assert built is not None, ca.kernel_failure()
    return built


def _inputs(batch, heads, kv_heads, length, dim, seed=0):
    """bf16 tensors laid out as transformers hands them over: [B, L, H, D] storage seen as [B, H, L, D]."""
    g = torch.Generator().manual_seed(seed)
    make = lambda h: torch.randn(batch, length, h, dim, generator=g).to(torch.bfloat16).transpose(1, 2)
    return make(heads), make(kv_heads), make(kv_heads), torch.randn(batch, length, heads, dim, generator=g)


def _attend(fn, q, k, v, grad):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad.to(out.dtype))
    return [out.detach(), q.grad, k.grad, v.grad]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)


@pytest.mark.parametrize("batch,heads,kv_heads,length,dim", [(2, 4, 4, 37, 32), (2, 6, 2, 130, 64),
                                                             (1, 3, 1, 64, 16), (3, 2, 1, 2, 8)])
def test_kernel_matches_float64_as_closely_as_torch_sdpa(kernel, batch, heads, kv_heads, length, dim):
    q, k, v, grad = _inputs(batch, heads, kv_heads, length, dim)
    truth = _attend(_sdpa, q.double(), k.double(), v.double(), grad.double())
    ours = _attend(ca.causal_attention, q, k, v, grad)
    torch_bf16 = _attend(_sdpa, q, k, v, grad)
    for name, t, o, s in zip(("out", "dq", "dk", "dv"), truth, ours, torch_bf16):
        assert o.shape == t.shape and o.dtype == torch.bfloat16, name
        scale = t.abs().max()
        ours_err, torch_err = ((o.double() - t).abs().max() / scale).item(), ((s.double() - t).abs().max() / scale).item()
        # bf16 rounds at 2^-8: both kernels round inputs, probabilities and outputs to it.
        assert ours_err < 2e-2 and ours_err <= 2 * torch_err + 4e-3, (name, ours_err, torch_err)


def test_scale_is_honoured(kernel):
    q, k, v, grad = _inputs(1, 2, 2, 20, 16)
    truth = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True, scale=0.3)
    out = ca.causal_attention(q, k, v, 0.3)
    assert torch.allclose(out.double(), truth.transpose(1, 2), atol=2e-2)


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def _count_kernel_calls(monkeypatch):
    calls = []
    real = ca.CausalAttention.apply
    monkeypatch.setattr(ca.CausalAttention, "apply", lambda *a: calls.append(1) or real(*a))
    return calls


def test_attention_function_takes_only_the_calls_it_computes_exactly(kernel, monkeypatch):
    calls = _count_kernel_calls(monkeypatch)
    q, k, v, _ = _inputs(2, 4, 2, 24, 16)
    module = _Module()
    reference = _sdpa(q.float(), k.float(), v.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: fp32 query cast like SDPA's inputs would be
        out, weights = ca.attention_forward(module, q.float(), k, v, None, scaling=None)
    assert calls == [1] and weights is None and out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference, atol=3e-2)

    mask = torch.ones(2, 1, 24, 24, dtype=torch.bool).tril()
    mask[1, :, :, 20:] = False  # a mask that is not packed rows' (here: no position ids to tell) goes to SDPA
    cases = [dict(attention_mask=mask), dict(dropout=0.1), dict(sliding_window=8),
             dict(is_causal=False)]
    for extra in cases:
        kwargs = {"attention_mask": None, **extra}
        ca.attention_forward(module, q, k, v, **kwargs)
    ca.attention_forward(module, q.float(), k.float(), v.float(), None)  # fp32 without autocast
    ca.attention_forward(module, q[:, :, -1:], k, v, None)  # one query against a cache
    assert calls == [1]
    # torch.compile cannot trace the extension: compiled code attends through SDPA, with no graph break
    compiled = torch.compile(lambda q, k, v: ca.attention_forward(module, q, k, v, None)[0], backend="eager",
                             fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(compiled(q.float(), k, v).float(), reference, atol=3e-2)
    assert calls == [1]


def _packed(lengths_per_row, heads, kv_heads, dim, seed=0):
    """Packed rows: inputs, their position ids (restarting per sample) and the block-diagonal causal mask."""
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths_per_row])
    q, k, v, grad = _inputs(len(lengths_per_row), heads, kv_heads, positions.shape[1], dim, seed)
    sample = torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row))
                          for row in lengths_per_row])
    mask = (sample[:, None, :, None] == sample[:, None, None, :]) & torch.ones(
        positions.shape[1], positions.shape[1], dtype=torch.bool).tril()
    return q, k, v, grad, positions, mask


@pytest.mark.parametrize("lengths,heads,kv_heads,dim", [([[37, 1, 64, 90], [130, 62]], 6, 2, 64),
                                                         ([[3, 5, 2]], 4, 4, 16), ([[65, 64, 1]], 3, 1, 32)])
def test_packed_rows_attend_within_each_sample_as_closely_as_torch_sdpa(kernel, lengths, heads, kv_heads, dim):
    q, k, v, grad, positions, mask = _packed(lengths, heads, kv_heads, dim)
    segments = ca.segments_from_positions(positions)
    masked = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    truth = _attend(masked, q.double(), k.double(), v.double(), grad.double())
    ours = _attend(lambda q, k, v: ca.causal_attention(q, k, v, None, segments), q, k, v, grad)
    torch_bf16 = _attend(masked, q, k, v, grad)
    for name, t, o, s in zip(("out", "dq", "dk", "dv"), truth, ours, torch_bf16):
        scale = t.abs().max()
        ours_err, torch_err = ((o.double() - t).abs().max() / scale).item(), ((s.double() - t).abs().max() / scale).item()
        assert ours_err < 2e-2 and ours_err <= 2 * torch_err + 4e-3, (name, ours_err, torch_err)


def test_segments_come_from_restarted_position_ids():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    assert ca.segments_from_positions(positions).tolist() == [[0, 0, 3], [0, 3, 2], [0, 5, 1], [0, 6, 2],
                                                              [1, 0, 8]]


def test_only_the_exact_packed_mask_is_taken_as_packed_rows(kernel):
    _, _, _, _, positions, mask = _packed([[5, 3, 4], [12]], 2, 2, 8)
    assert ca._packed_masks.segments(mask, positions).tolist() == [[0, 0, 5], [0, 5, 3], [0, 8, 4], [1, 0, 12]]
    leaky = mask.clone()
    leaky[0, 0, 6, 2] = True  # one query sees the previous sample
    padded = mask.clone()
    padded[1, 0, :, 10:] = False  # padding masked as well
    for other, ids in ((leaky, positions), (padded, positions), (mask, None), (mask.float(), positions),
                       (mask.expand(2, 3, 12, 12), positions), (mask, positions.expand(3, 2, 12))):  # 3-D: mrope
        assert ca._packed_masks.segments(other, ids) is None


def test_segments_must_tile_every_row(kernel):
    q, k, v, _ = _inputs(2, 2, 2, 10, 8)
    for bad in ([[0, 0, 10], [1, 0, 9]], [[0, 0, 4], [0, 5, 5], [1, 0, 10]], [[1, 0, 10], [0, 0, 10]],
                [[0, 0, 10]]):
        with pytest.raises(RuntimeError, match="segments must tile every batch row in order"):
            ca.causal_attention(q, k, v, None, torch.tensor(bad))


def _tiny_llama(attention: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(_tiny_config("llama", 128), attn_implementation=attention)


def test_tiny_llama_trains_the_same_with_the_kernel(kernel):
    model = _tiny_llama("sdpa")
    ids = torch.randint(0, model.config.vocab_size, (2, 90), generator=torch.Generator().manual_seed(1))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    sdpa_loss, sdpa_grads = loss_and_grads()
    before = ca.use_causal_attention_kernel(model)
    assert before == "sdpa" and model.config._attn_implementation == ca.NAME
    kernel_loss, kernel_grads = loss_and_grads()
    ca.restore_attention(model, before)
    assert model.config._attn_implementation == "sdpa"
    assert abs(kernel_loss - sdpa_loss) < 1e-2 * abs(sdpa_loss)
    for a, b in zip(sdpa_grads, kernel_grads):
        assert ((a - b).norm() / a.norm()).item() < 3e-2


def test_tiny_llama_trains_the_same_on_packed_rows_with_the_kernel(kernel, monkeypatch):
    """Padding-free packing (one row of samples, position ids restarting): the kernel takes transformers'
    block-diagonal mask as segments and learns what SDPA with that mask learns."""
    model = _tiny_llama("sdpa")
    lengths = [30, 1, 47, 18]
    ids = torch.randint(0, model.config.vocab_size, (1, sum(lengths)), generator=torch.Generator().manual_seed(3))
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, position_ids=positions).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    sdpa_loss, sdpa_grads = loss_and_grads()
    ca.use_causal_attention_kernel(model)
    calls = _count_kernel_calls(monkeypatch)
    kernel_loss, kernel_grads = loss_and_grads()
    assert len(calls) == model.config.num_hidden_layers
    assert abs(kernel_loss - sdpa_loss) < 1e-2 * abs(sdpa_loss)
    for a, b in zip(sdpa_grads, kernel_grads):
        assert ((a - b).norm() / a.norm()).item() < 3e-2


def test_only_sdpa_models_switch(kernel):
    model = _tiny_llama("eager")
    assert ca.use_causal_attention_kernel(model) is None
    assert model.config._attn_implementation == "eager"


def test_right_padded_batches_drop_their_mask_under_the_kernel(kernel):
    from tunesmith.speed.padding_mask import eligible_config

    class Config:
        _attn_implementation = ca.NAME

    assert eligible_config(Config())


def test_build_problem_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "ninja" else "/usr/bin/" + name)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    import tunesmith.hardware as hardware

    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: "avx512_bf16")
    assert "ninja" in ca.build_problem()
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: "amx_bf16")
    assert "without AMX" in ca.build_problem()
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert "Linux x86-64 only" in ca.build_problem()


def test_gradient_checkpointing_replays_the_kernel_exactly(kernel, monkeypatch):
    model = _tiny_llama("sdpa").train()  # checkpointing acts in training mode only
    ca.use_causal_attention_kernel(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 70), generator=torch.Generator().manual_seed(2))
    calls = _count_kernel_calls(monkeypatch)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert len(calls) == 2 + 2 * 2  # two layers; with checkpointing each forward runs again in backward
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_failed_build_leaves_attention_on_sdpa(monkeypatch, tmp_path):
    import torch.utils.cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension 'tunesmith_causal_attention'\ng++: fatal error")

    monkeypatch.setattr(ca._KERNEL, "module", None)
    monkeypatch.setattr(ca._KERNEL, "failure", None)
    monkeypatch.setattr(ca, "build_problem", lambda: None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    model = _tiny_llama("sdpa")
    assert ca.use_causal_attention_kernel(model) is None
    assert model.config._attn_implementation == "sdpa"
    assert ca.kernel_failure() == "could not be built (RuntimeError: g++: fatal error)"


def test_a_cpu_bf16_run_packs_its_batches_onto_the_kernel(kernel, stories_dir, tmp_path, monkeypatch):
    """`data.packing: auto` with the kernel: each step's samples go in one row, as segments of the kernel."""
    import yaml

    from tunesmith.config.loading import validate_config
    from tunesmith.recipes import train

    from .conftest import EXAMPLES, run_log

    segments_seen = []
    real = ca.CausalAttention.apply
    monkeypatch.setattr(ca.CausalAttention, "apply",
                        lambda q, k, v, scale, segments: segments_seen.append((q.shape[0], len(segments)))
                        or real(q, k, v, scale, segments))
    cfg = validate_config({
        "model": {"name_or_path": str(stories_dir), "dtype": "bfloat16"},
        "method": {"name": "lora", "r": 4, "dropout": 0.0},
        "data": {"train": [{"path": str(EXAMPLES / "data" / "stories_chat.jsonl")}], "template": "alpaca_en",
                 "max_length": 128},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4, "tensorboard": False}})
    train(cfg)
    assert "packing: each batch's samples in one row" in run_log(tmp_path / "run")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["packing"] is True
    # every call a single row; the steps' rows hold four samples (the one-sample calls are first-batch probes)
    assert all(rows == 1 for rows, _ in segments_seen) and segments_seen.count((1, 4)) >= 2


def test_a_compiled_run_keeps_sdpa_and_does_not_pack(stories_dir, caplog):
    """`speed.torch_compile`: the kernel cannot be traced, so the run attends through SDPA and `auto` pads."""
    from transformers import AutoModelForCausalLM

    from tunesmith.recipes.sft import _resolve_packing
    from tunesmith.reporting import Reporter
    from tunesmith.speed.apply import _causal_attention

    from .conftest import speed_plan
    from .test_training import make_config

    model = AutoModelForCausalLM.from_pretrained(stories_dir, attn_implementation="sdpa")
    cfg = make_config(stories_dir, "unused")
    with caplog.at_level("INFO", logger="tunesmith"):
        assert _causal_attention(speed_plan(torch_compile=True), model, torch.bfloat16, Reporter()) is None
    assert model.config._attn_implementation == "sdpa"
    assert "not under speed.torch_compile" in caplog.text
    assert _resolve_packing(cfg, model, None).data.packing is False


def test_a_lock_left_by_a_killed_build_is_cleared_and_a_live_one_kept(tmp_path):
    """torch's extension builder waits on its lock file without end: an interrupted first build must not hang every
    later run, and a build in progress (a fresh lock) must not be disturbed."""
    import os
    import time

    from tunesmith.speed.cpu.native import STALE_LOCK_S, clear_stale_lock

    lock = tmp_path / "lock"
    lock.touch()
    assert not clear_stale_lock(tmp_path) and lock.exists()
    old = time.time() - STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    assert clear_stale_lock(tmp_path) and not lock.exists()
    assert not clear_stale_lock(tmp_path)  # no lock: nothing to do
