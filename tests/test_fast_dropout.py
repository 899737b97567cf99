"""speed.switches.fast_dropout: the cheap CPU dropout mask keeps dropout's statistics, gradient and reproducibility."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from tunesmith.speed.cpu.dropout import FastDropout, _hash_words, _scale_kept, keep_mask, use_fast_dropout


def test_every_lane_drops_with_probability_p():
    torch.manual_seed(0)
    keep, dropped = keep_mask(torch.Size([1_000_000, 4]), 0.1)
    assert dropped == round(0.1 * 32768) / 32768 and abs(dropped - 0.1) < 1 / 32768
    assert keep.shape == (1_000_000, 4) and keep.dtype == torch.uint8 and set(keep.unique().tolist()) == {0, 1}
    rates = 1 - keep.float().mean(dim=0)  # low and high 16-bit lanes of the 32-bit hash words, separately
    assert torch.allclose(rates, torch.full((4,), dropped), atol=0.0015), rates


def _lowbias32(index: int, multiplier: int, offset: int) -> int:
    """The hash in plain Python integers, mod 2^32: what the int32 tensor ops must compute."""
    full = (1 << 32) - 1
    z = (index * multiplier + offset) & full
    z ^= z >> 16
    z = (z * 0x7FEB352D) & full
    z ^= z >> 15
    z = (z * 0x846CA68B) & full
    return z ^ (z >> 16)


def test_hash_words_match_the_plain_integer_hash():
    """The tensor ops wrap mod 2^32 and their shifts are logical, across the row layout of the indices."""
    key = torch.tensor([-123_456_789, 2_000_000_001])
    words = _hash_words(5000, key)
    multiplier, offset = (-123_456_789 | 1) & 0xFFFFFFFF, 2_000_000_001
    for i in (0, 1, 2, 1023, 1024, 1025, 2047, 4999):
        assert int(words[i]) & 0xFFFFFFFF == _lowbias32(i, multiplier, offset), i


def test_masks_are_independent_across_elements_and_calls():
    torch.manual_seed(0)
    first = keep_mask(torch.Size([2_000_000]), 0.5)[0].float() * 2 - 1
    second = keep_mask(torch.Size([2_000_000]), 0.5)[0].float() * 2 - 1
    # +-1 variables: the mean of a product is their correlation; independent ones give ~0 (sd 1/sqrt(n) = 0.0007).
    assert abs((first * second).mean()) < 0.004  # two calls (two keys)
    assert abs((first[1:] * first[:-1]).mean()) < 0.004  # neighbours (two lanes of one word, or adjacent words)
    assert abs((first[1024:] * first[:-1024]).mean()) < 0.004  # one row of indices apart
    assert abs(first.mean()) < 0.004


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaling_the_kept_values_is_dropouts_select_and_scale(dtype):
    torch.manual_seed(2)
    x = torch.randn(300, 77).to(dtype)
    keep, dropped = keep_mask(x.shape, 0.3)
    scale = 1 / (1 - dropped)
    assert torch.equal(_scale_kept(x, keep, scale), torch.where(keep.bool(), x, 0.0).mul_(scale))


def test_odd_sizes_and_extremes():
    keep, _ = keep_mask(torch.Size([3, 5, 7]), 0.5)
    assert keep.shape == (3, 5, 7)
    assert keep_mask(torch.Size([1000]), 0.0)[0].all()
    with pytest.raises(ValueError):
        FastDropout(1.0)


def test_forward_backward_match_dropout_semantics():
    torch.manual_seed(1)
    x = (torch.rand(512, 256) + 0.5).requires_grad_()  # no zeros, so a zero output means dropped
    layer = FastDropout(0.2).train()
    out = layer(x)
    kept = out != 0
    scale = 1 / (1 - round(0.2 * 32768) / 32768)
    assert torch.allclose(out[kept], x[kept] * scale)
    assert abs(1 - kept.float().mean().item() - 0.2) < 0.01
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.01  # expectation preserved
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, kept.float() * scale)
    assert layer.eval()(x) is x and FastDropout(0.0).train()(x) is x


def test_seeded_masks_repeat():
    layer, x = FastDropout(0.3).train(), torch.ones(64, 64)
    torch.manual_seed(5)
    first = layer(x)
    torch.manual_seed(5)
    assert torch.equal(first, layer(x))


def _lora(model_dir, dropout):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                            target_modules=["q_proj", "v_proj"]))


def test_swaps_peft_lora_dropouts_and_the_adapter_still_saves(tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory("llama")
    model = _lora(model_dir, 0.1)
    layers = model.get_base_model().config.num_hidden_layers
    assert use_fast_dropout(model) == 2 * layers
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert use_fast_dropout(_lora(model_dir, 0.0)) == 0  # PEFT uses nn.Identity then: nothing to swap
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "adapter")
    assert reloaded.peft_config["default"].lora_dropout == 0.1


@pytest.mark.parametrize("compiled", [False, True], ids=["tensor ops", "compiled kernel"])
def test_gradient_checkpointing_recomputes_the_same_masks(tiny_model_factory, monkeypatch, request, compiled):
    """Checkpointing replays the forward pass; the CPU RNG state it restores must give the same masks, or the
    gradients would differ from a run without checkpointing. Both paths draw their key from that state."""
    from tunesmith.speed.cpu import dropout

    monkeypatch.setattr(dropout._KERNEL, "module", request.getfixturevalue("dropout_kernel").load_kernel() if compiled
                        else None)
    model_dir = tiny_model_factory("llama")
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = _lora(model_dir, 0.3)
        use_fast_dropout(model)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(1)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_compiles_to_one_graph_with_the_eager_masks(monkeypatch):
    """`speed.torch_compile`: each call draws a new random key. Were it read out as Python ints, torch.compile
    would guard on their values and recompile at every call."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    # Inductor draws its own random numbers unless told to call torch's; with torch's, the masks must be eager's.
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    torch._dynamo.reset()
    counters.clear()
    layer = nn.Sequential(nn.Linear(16, 16), FastDropout(0.2)).train()
    compiled = torch.compile(layer, dynamic=True)
    x = torch.randn(2, 37, 16, requires_grad=True)
    for seed in range(4):
        torch.manual_seed(seed)
        eager = layer(x)
        torch.manual_seed(seed)
        out = compiled(x)
        assert torch.equal(out, eager), seed
        assert 0 < int((out == 0).sum()) < out.numel()
    (grad,) = torch.autograd.grad(out.sum(), x)
    (eager_grad,) = torch.autograd.grad(eager.sum(), x)
    assert torch.allclose(grad, eager_grad)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"]
    torch._dynamo.reset()


@pytest.fixture
def dropout_kernel():
    from tunesmith.speed.cpu import dropout
    from tunesmith.speed.cpu.native import compiler_problem

    problem = compiler_problem()
    if problem is not None:
        pytest.skip(f"the dropout kernel cannot be built here: {problem}")
    assert dropout.load_kernel() is not None, dropout.kernel_failure()
    return dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 394, 576), (3, 5, 7), (1,), (2, 1025)])
def test_compiled_dropout_is_the_tensor_ops_bit_for_bit(dropout_kernel, monkeypatch, dtype, shape):
    """Same key, same mask, same output and gradient: a seeded run (or a checkpoint replay) gives the same numbers on
    either path. Sizes around the kernel's 1024-element chunks and odd counts (a last word's unused lane)."""
    x = torch.randn(shape).to(dtype)
    x.view(-1)[0] = float("nan")  # dropped or kept, NaN stays NaN (x * 0 is not folded to 0)
    grad = torch.randn(shape).to(dtype)
    layer = FastDropout(0.3).train()
    results = []
    for kernel in (dropout_kernel.load_kernel(), None):
        monkeypatch.setattr(dropout_kernel._KERNEL, "module", kernel)
        torch.manual_seed(7)
        leaf = x.clone().requires_grad_()
        out = layer(leaf)
        out.backward(grad)
        results.append((out.detach(), leaf.grad))
    (out, x_grad), (ref, ref_grad) = results
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().view(-1)[0]
    assert torch.equal(out.nan_to_num(), ref.nan_to_num()) and torch.equal(x_grad, ref_grad)
    assert out.dtype == dtype
    if out.numel() > 100:
        assert 0 < int((out == 0).sum()) < out.numel()


def test_compiled_dropout_runs_in_training_and_keeps_the_mask_for_backward(dropout_kernel, monkeypatch):
    """The kernel path is taken for contiguous CPU inputs and saves one uint8 mask, as the memory planner counts."""
    calls = []
    real = dropout_kernel._KernelDropout.apply
    monkeypatch.setattr(dropout_kernel._KernelDropout, "apply", lambda *a: calls.append(1) or real(*a))
    saved = []
    x = torch.randn(8, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        FastDropout(0.1).train()(x)
    assert calls == [1] and [(t.dtype, t.shape) for t in saved] == [(torch.uint8, x.shape)]
    FastDropout(0.1).train()(x.t())  # not contiguous: the tensor ops
    assert calls == [1]


def test_without_a_compiler_dropout_runs_on_tensor_ops_and_says_why(monkeypatch, tiny_model_factory, caplog):
    from tunesmith.reporting import Reporter
    from tunesmith.speed.apply import apply_to_model
    from tunesmith.speed.cpu import dropout

    from .conftest import speed_plan

    monkeypatch.setattr(dropout._KERNEL, "module", None)
    monkeypatch.setattr(dropout._KERNEL, "failure", None)
    monkeypatch.setattr(dropout, "compiler_problem", lambda: "no C++ compiler found (install g++)")
    model = _lora(tiny_model_factory("llama"), 0.1)
    with caplog.at_level("INFO", logger="tunesmith"):
        swaps = apply_to_model(speed_plan(task="reward", fast_rms_norm=False), model, None, torch.float32,
                               Reporter()).swaps
    assert swaps["dropout"] > 0 and dropout.load_kernel() is None
    assert "tensor ops: the kernel no C++ compiler found (install g++)" in caplog.text
    x = torch.randn(2, 8, 16)
    assert dropout._kernel_takes(x) is False and 0 < int((FastDropout(0.5).train()(x) == 0).sum()) < x.numel()
