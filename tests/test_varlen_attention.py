"""The CUDA varlen attention (`tunesmith/speed/varlen_attention.py`), checked on CPU: torch's varlen kernel is CUDA
only, so a reference kernel with its signature (SDPA over each segment) stands in, and the module is told that CPU
tensors are its to take. What is checked is the wiring: which tokens form each segment (packed rows, padded rows,
a collator's boundaries), the keyword arguments each torch release's signature wants, the fallbacks, and the switch
and its undo. The kernel itself is compared with SDPA on a GPU by benchmarks/gpu_check.sh."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tunesmith.speed import varlen_attention

from .conftest import _tiny_config

calls: list[tuple[int, int]] = []


def reference_kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False):
    """torch 2.13's varlen_attn signature, computed segment by segment with SDPA."""
    assert window_size == (-1, 0), "the wiring must ask for causal attention"
    assert torch.equal(cu_seq_q, cu_seq_k) and cu_seq_q.dtype == torch.int32
    lengths = (cu_seq_q[1:] - cu_seq_q[:-1]).tolist()
    assert max_q == max_k == max(lengths) and sum(lengths) == query.shape[0]
    calls.append((len(lengths), max_q))
    out = []
    for start, end in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist()):
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
        out.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                  enable_gqa=enable_gqa)[0].transpose(0, 1))
    return torch.cat(out)


@pytest.fixture
def cpu_kernel(monkeypatch):
    calls.clear()
    monkeypatch.setattr(varlen_attention, "_kernel", lambda: reference_kernel)
    monkeypatch.setattr(varlen_attention, "DEVICES", ("cpu",))
    return calls


def tiny_llama(attn="sdpa"):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_config("llama", 64), attn_implementation=attn)
    return model.to(torch.bfloat16).eval()


SAMPLES = [torch.randint(3, 64, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 3)]


def alone(model, ids):
    with torch.no_grad():
        return model(ids[None]).logits[0].float()


def test_packed_rows_attend_only_within_each_sample(cpu_kernel):
    """A packed row through the varlen path gives each sample the logits it has alone under SDPA."""
    model = tiny_llama()
    expected = [alone(model, ids) for ids in SAMPLES]
    assert varlen_attention.use_varlen_attention(model) == "sdpa"
    assert model.config._attn_implementation == varlen_attention.NAME
    packed = torch.cat(SAMPLES)[None]
    positions = torch.cat([torch.arange(len(ids)) for ids in SAMPLES])[None]
    with torch.no_grad():
        logits = model(packed, position_ids=positions).logits[0].float()
    assert cpu_kernel == [(3, 9)] * 2, "every layer must go through the kernel, with the three samples"
    got = torch.split(logits, [len(ids) for ids in SAMPLES])
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, atol=2e-2, rtol=2e-2)
    # The samples truly were kept apart: attending across them changes the later samples' logits.
    with torch.no_grad():
        crossed = model.__class__.forward(model, packed).logits[0].float()  # positions 0..n-1: one sequence
    assert not torch.allclose(crossed[len(SAMPLES[0]):], logits[len(SAMPLES[0]):], atol=5e-2)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_rows_attend_only_to_their_tokens(cpu_kernel, side):
    model = tiny_llama()
    expected = [alone(model, ids) for ids in SAMPLES]
    longest = max(len(ids) for ids in SAMPLES)
    ids = torch.zeros(len(SAMPLES), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sample in enumerate(SAMPLES):
        where = slice(0, len(sample)) if side == "right" else slice(longest - len(sample), longest)
        ids[row, where], mask[row, where] = sample, 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    varlen_attention.use_varlen_attention(model)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=positions).logits.float()
    assert cpu_kernel and all(segments == 3 for segments, _ in cpu_kernel)
    for row, sample in enumerate(SAMPLES):
        where = slice(0, len(sample)) if side == "right" else slice(longest - len(sample), longest)
        torch.testing.assert_close(logits[row, where], expected[row], atol=2e-2, rtol=2e-2)


def test_a_collators_segment_boundaries_are_used(cpu_kernel):
    """transformers' flash-attention keyword arguments (DataCollatorWithFlattening(return_flash_attn_kwargs=True))
    name the segments; the kernel gets exactly those."""
    model = tiny_llama()
    varlen_attention.use_varlen_attention(model)
    cu = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    with torch.no_grad():
        model(torch.cat(SAMPLES)[None], position_ids=torch.cat([torch.arange(len(s)) for s in SAMPLES])[None],
              cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=9, max_length_k=9)
    assert cpu_kernel == [(3, 9)] * 2


def test_what_the_kernel_cannot_compute_goes_to_sdpa_with_the_right_mask(cpu_kernel):
    """fp32 (the kernel is half precision only): SDPA, with the block-diagonal mask of the packed row, so the
    answer is still each sample's own."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_config("llama", 64), attn_implementation="sdpa").eval()
    expected = [alone(model, ids) for ids in SAMPLES]
    varlen_attention.use_varlen_attention(model)
    positions = torch.cat([torch.arange(len(ids)) for ids in SAMPLES])[None]
    with torch.no_grad():
        logits = model(torch.cat(SAMPLES)[None], position_ids=positions).logits[0]
    assert cpu_kernel == []
    for mine, theirs in zip(torch.split(logits, [len(ids) for ids in SAMPLES]), expected):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_older_torch_signatures_get_what_they_ask_for(monkeypatch):
    """torch releases before 2.13 asked for `is_causal` and had no `enable_gqa` or `scale`: key/value heads are
    repeated and a non-default scale goes into the query instead."""
    seen = {}

    def old_kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        seen.update(is_causal=is_causal, kv_heads=key.shape[1])
        return reference_kernel(query * 1.0, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size=(-1, 0),
                                scale=None)

    monkeypatch.setattr(varlen_attention, "_kernel", lambda: old_kernel)
    q, k, v = torch.randn(7, 4, 8), torch.randn(7, 2, 8), torch.randn(7, 2, 8)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    out = varlen_attention._varlen(q, k, v, cu, 4, scale=0.5)
    assert seen == {"is_causal": True, "kv_heads": 4}
    expected = reference_kernel(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), cu, cu, 4, 4,
                                window_size=(-1, 0), scale=0.5)
    torch.testing.assert_close(out, expected)
    assert not math.isclose(0.5, 1 / math.sqrt(8))  # the scale really differed from the kernel's own


def test_the_speed_plan_switches_it_in_on_cuda_and_undo_restores_sdpa(cpu_kernel, caplog):
    from tunesmith.recipes.sft import _resolve_packing
    from tunesmith.reporting import Reporter
    from tunesmith.speed.apply import apply_to_model

    from .conftest import speed_plan
    from .test_training import make_config

    model = tiny_llama()
    with caplog.at_level("INFO", logger="tunesmith"):
        done = apply_to_model(speed_plan("cuda"), model, None, torch.bfloat16, Reporter())
    assert model.config._attn_implementation == varlen_attention.NAME
    assert "varlen FlashAttention: packed samples" in caplog.text
    assert _resolve_packing(make_config("x/y", "unused"), model, done.packed_attention).data.packing is True
    done.undo(model)
    assert model.config._attn_implementation == "sdpa"

    off = tiny_llama()
    done = apply_to_model(speed_plan("cuda", gpu_varlen_attention=False), off, None, torch.bfloat16, Reporter())
    assert off.config._attn_implementation == "sdpa" and done.packed_attention is None
    assert _resolve_packing(make_config("x/y", "unused"), off, None).data.packing is False
    compiled = tiny_llama()
    apply_to_model(speed_plan("cuda", torch_compile=True), compiled, None, torch.bfloat16, Reporter())
    assert compiled.config._attn_implementation == "sdpa"
    # A task whose trainer it was not measured under (the preference tasks, TRL's trainers) keeps SDPA too.
    kept = tiny_llama()
    apply_to_model(speed_plan("cuda", task="dpo"), kept, None, torch.bfloat16, Reporter())
    assert kept.config._attn_implementation == "sdpa"


def test_without_the_kernel_the_run_stays_on_sdpa_and_the_log_says_why(monkeypatch, caplog):
    from tunesmith.reporting import Reporter
    from tunesmith.speed.apply import apply_to_model

    from .conftest import speed_plan

    monkeypatch.setattr(varlen_attention, "_kernel", lambda: None)
    model = tiny_llama()
    with caplog.at_level("INFO", logger="tunesmith"):
        done = apply_to_model(speed_plan("cuda"), model, None, torch.bfloat16, Reporter())
    assert done.packed_attention is None and model.config._attn_implementation == "sdpa"
    assert "has no torch.nn.attention.varlen" in caplog.text
