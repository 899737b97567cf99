"""training/rms_norm.py: the CPU RMSNorm Function against float64 and transformers' modules, and the swap."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tunesmith.speed.cpu.rms_norm import CPURMSNorm, _RMSNormFunction, use_cpu_rms_norm


def _float64_rms_norm(x, weight, eps, offset):
    x, weight = x.double(), weight.double()
    return (weight + offset) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("trainable", [False, True])
def test_matches_a_float64_recomputation(offset, trainable):
    torch.manual_seed(0)
    x = (torch.randn(3, 7, 40) * 3).requires_grad_()
    weight = (torch.rand(40) + 0.5).requires_grad_(trainable)
    grad = torch.randn(3, 7, 40)
    ours = _RMSNormFunction.apply(x, weight, 1e-6, offset)
    ours.backward(grad)
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_(trainable)
    expected = _float64_rms_norm(x64, w64, 1e-6, offset)
    expected.backward(grad.double())
    assert torch.allclose(ours.double(), expected, rtol=1e-6, atol=1e-6)
    assert torch.allclose(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    if trainable:
        assert torch.allclose(weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    else:
        assert weight.grad is None


def test_forward_is_bit_identical_to_llamas_and_the_gradient_agrees():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    norm.weight.requires_grad_(False)
    x = torch.randn(2, 9, 64, requires_grad=True)
    grad = torch.randn(2, 9, 64)
    expected = norm(x)
    expected.backward(grad)
    expected_grad, x.grad = x.grad.clone(), None
    swapped = CPURMSNorm(norm, 1e-5, 0.0)
    ours = swapped(x)
    ours.backward(grad)
    assert torch.equal(ours, expected)
    assert torch.allclose(x.grad, expected_grad, rtol=1e-5, atol=1e-6)


def _bytes_saved(module, x):
    seen = {}

    def pack(tensor):
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(x)
    return sum(seen.values())


@pytest.mark.parametrize("trainable", [False, True])
def test_keeps_what_autograd_keeps_for_the_original(trainable):
    """The memory planner traces transformers' module; the swap must keep the same bytes for backward."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(64)
    norm.weight.requires_grad_(trainable)
    x = torch.randn(2, 9, 64, requires_grad=True)
    assert _bytes_saved(CPURMSNorm(norm, norm.variance_epsilon, 0.0), x) == _bytes_saved(norm, x)


def test_swaps_llama_and_gemma_norms_and_leaves_others():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    class OddRMSNorm(nn.Module):  # named like one, computes something else
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(16))
            self.eps = 1e-6

        def forward(self, x):
            return x * self.weight

    torch.manual_seed(0)
    model = nn.ModuleDict({"llama": LlamaRMSNorm(16), "gemma": GemmaRMSNorm(16), "odd": OddRMSNorm(),
                           "layer": nn.LayerNorm(16)})
    with torch.no_grad():
        model["gemma"].weight.uniform_(-0.5, 0.5)
    originals = copy.deepcopy(model)
    assert use_cpu_rms_norm(model) == 2
    assert isinstance(model["llama"], CPURMSNorm) and model["llama"].offset == 0
    assert isinstance(model["gemma"], CPURMSNorm) and model["gemma"].offset == 1
    assert type(model["odd"]) is OddRMSNorm and type(model["layer"]) is nn.LayerNorm
    x = torch.randn(3, 16)
    for name in ("llama", "gemma"):
        assert torch.allclose(model[name](x), originals[name](x), rtol=1e-6, atol=1e-6)
    bf16 = x.to(torch.bfloat16)  # not float32: the module's own forward
    assert torch.equal(model["llama"](bf16), originals["llama"](bf16))


def _tiny_lora_llama():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ == "LlamaRMSNorm":
                module.weight.uniform_(0.5, 1.5)
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                            init_lora_weights=False, task_type="CAUSAL_LM")).train()


def _loss_and_grads(model, bf16):
    torch.manual_seed(1)
    ids = torch.randint(0, 120, (2, 16))
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16 autocast"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "gradient checkpointing"])
def test_a_swapped_model_trains_as_the_original(bf16, checkpointing):
    model = _tiny_lora_llama()
    reference = copy.deepcopy(model)
    keys = model.state_dict().keys()
    assert use_cpu_rms_norm(model) == 5  # two per layer and the final norm
    assert model.state_dict().keys() == keys  # adapters and checkpoints save as before
    for candidate in (model, reference):
        if checkpointing:
            candidate.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            candidate.enable_input_require_grads()
    expected_loss, expected = _loss_and_grads(reference, bf16)
    loss, grads = _loss_and_grads(model, bf16)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    assert grads.keys() == expected.keys() and grads
    tolerance = 1e-2 if bf16 else 1e-5  # bf16 matmuls round the slightly different fp32 gradients
    for name, grad in grads.items():
        assert torch.allclose(grad, expected[name], atol=tolerance * expected[name].abs().max().item()), name


def test_off_by_config_and_on_gpu_runs():
    from tunesmith.reporting import Reporter
    from tunesmith.speed.apply import apply_to_model

    from .conftest import speed_plan

    model = _tiny_lora_llama()

    def swaps(plan):
        return apply_to_model(plan, model, None, torch.float32, Reporter()).swaps

    assert swaps(speed_plan(task="reward", fast_rms_norm=False)).get("rms_norm", 0) == 0
    assert swaps(speed_plan("cuda")) == {}
    assert swaps(speed_plan(task="grpo")) == {}  # GRPO's trainer takes none of the model pieces
    assert swaps(speed_plan(task="reward"))["rms_norm"] == 5
    assert sum(isinstance(module, CPURMSNorm) for module in model.modules()) == 5
