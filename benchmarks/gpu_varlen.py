"""Varlen FlashAttention on a GPU (`tunesmith/speed/varlen_attention.py`): exact, and what it saves.

1. Exactness on a real model (stories260K, --model): a packed row of samples through the varlen path against each
   sample alone through SDPA, bf16: the largest logit difference, and the LoRA-free input gradient's relative
   difference.
2. Attention alone, forward and backward, Llama-3.2-1B's heads (32 query, 8 key/value, head dim 64) on a packed row
   of --tokens tokens made of samples of the shared Alpaca file's length distribution: the varlen kernel against
   SDPA with the block-diagonal mask transformers builds for a packed row (what `data.packing` costs without it),
   and against SDPA over the same samples padded to a batch (what padding costs). Median of 20 after 5 warm-ups.

    python benchmarks/gpu_varlen.py --model .gpu-model/stories260K
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "instruct" / "alpaca_en_demo.json"


def exactness(model_dir: str) -> None:
    from transformers import AutoModelForCausalLM

    from tunesmith.speed import varlen_attention

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    vocab = model.config.vocab_size
    samples = [torch.randint(3, vocab, (n,), device="cuda") for n in (37, 120, 9, 200)]

    def run(ids, **kwargs):
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        logits = model(inputs_embeds=embeds, **kwargs).logits.float()
        logits.sum().backward()
        return logits[0], embeds.grad[0].float()

    alone = [run(ids[None]) for ids in samples]
    print("varlen_attn signature:", varlen_attention._call_style(varlen_attention._kernel()))
    assert varlen_attention.use_varlen_attention(model) == "sdpa", varlen_attention.unavailable_reason()
    positions = torch.cat([torch.arange(len(ids), device="cuda") for ids in samples])[None]
    logits, grad = run(torch.cat(samples)[None], position_ids=positions)
    ref_logits = torch.cat([a[0] for a in alone])
    ref_grad = torch.cat([a[1] for a in alone])
    print(f"exactness on {Path(model_dir).name}, bf16, 4 packed samples: max |logit diff| "
          f"{(logits - ref_logits).abs().max():.3e} (logits up to {ref_logits.abs().max():.1f}); input-gradient "
          f"relative difference {(grad - ref_grad).norm() / ref_grad.norm():.3e}")


def lengths(tokens: int) -> list[int]:
    """Sample lengths drawn from the Alpaca file's characters (4 per token) until `tokens` are filled."""
    records = json.loads(DATA.read_text()) if DATA.exists() else []
    sizes = [max(16, sum(len(r.get(k) or "") for k in ("instruction", "input", "output")) // 4) for r in records]
    sizes = sizes or [160, 90, 300, 40, 610, 220]
    out, i = [], 0
    while sum(out) < tokens:
        out.append(min(sizes[i % len(sizes)], 2048))
        i += 1
    out[-1] -= sum(out) - tokens
    return [n for n in out if n > 0]


def timing(tokens: int) -> None:
    from triton.testing import do_bench

    from tunesmith.speed.packed_rows import packed_causal_mask
    from tunesmith.speed.varlen_attention import _varlen

    sizes = lengths(tokens)
    heads, kv, dim = 32, 8, 64
    q, k, v = (torch.randn(tokens, h, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for h in (heads, kv, kv))
    cu = F.pad(torch.tensor(sizes, device="cuda").cumsum(0), (1, 0)).to(torch.int32)
    scale = dim ** -0.5

    def varlen():
        _varlen(q, k, v, cu, max(sizes), scale).sum().backward()

    starts = F.pad(torch.tensor(sizes).cumsum(0)[:-1], (1, 0))
    segments = torch.stack([torch.zeros_like(starts), starts, torch.tensor(sizes)], dim=1)
    mask = packed_causal_mask(segments, 1, tokens).cuda()[:, None]  # what transformers builds for the packed row

    def masked():
        F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                       v.transpose(0, 1)[None], attn_mask=mask, enable_gqa=True).sum().backward()

    longest, rows = max(sizes), len(sizes)
    qp, kp, vp = (torch.randn(rows, h, longest, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                  for h in (heads, kv, kv))
    pad = torch.arange(longest, device="cuda")[None, :] < torch.tensor(sizes, device="cuda")[:, None]
    pad_mask = (pad[:, None, None, :] & torch.ones(longest, longest, dtype=torch.bool, device="cuda").tril())

    def padded():
        F.scaled_dot_product_attention(qp, kp, vp, attn_mask=pad_mask, enable_gqa=True).sum().backward()

    print(f"attention forward+backward, {tokens} tokens in {rows} samples (longest {longest}), 32/8 heads x 64:")
    for name, fn in (("varlen (tunesmith)", varlen), ("SDPA, packed row + block mask", masked),
                     ("SDPA, padded batch + mask", padded)):
        ms = do_bench(fn, warmup=5, rep=20, return_mode="median")
        print(f"  {name:32s} {ms:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories260K"))
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    exactness(args.model)
    timing(args.tokens)


if __name__ == "__main__":
    main()
