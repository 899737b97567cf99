"""How far bf16 autocast moves each method's gradients: one batch, the same weights, three precisions.

For every method the trainable parameters' gradient is computed on the same batch with the model in float32 under
bf16 autocast (how `model.dtype: auto` trains on a CPU with AMX), in plain float32, and in float64 (the reference).
It prints, per method, the relative error ||g - g64|| / ||g64|| of the whole trainable gradient, its cosine with the
reference, the share of entries whose sign agrees with it (Adam's first step moves every parameter by the learning
rate in its gradient's sign), and the worst of those errors over the method's parameter tensors. Gradients at
initialisation as training makes it (LoRA's B = 0, so only B has a gradient; P-tuning v2's prefixes from its
init_text), no dropout (eval mode), so only precision differs. The answer depends on the model (prefix tuning: 0.59
on SmolLM2-135M, 0.03 on stories260K). Run:

    python benchmarks/bf16_gradients.py                                  # SmolLM2-135M (PyPI), 4 samples
    python benchmarks/bf16_gradients.py --methods lora,prefix --samples 8 --max-length 256
    python benchmarks/bf16_gradients.py --methods ptuning_v2 --init-text none   # PEFT's random prefixes
    python benchmarks/bf16_gradients.py --model ../shared/models/stories260K

Why it exists: prefix tuning diverged under bf16 autocast where float32 trained (docs/methods.md); this shows the
cause (its key/value prefixes are reached only through every layer's backward) and which methods share it, which is
what `Method.bf16_autocast_safe` records.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = str(ROOT.parent / "shared" / "data" / "instruct" / "alpaca_en_demo.json")
DEFAULT_METHODS = "full,lora,ia3,houlsby,prompt,prefix,ptuning_v2"


def gradients(model, params, batch, mode: str):
    import torch

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    with ctx:
        loss = model(**batch).loss
    loss.backward()
    grads = [p.grad.detach().double().clone() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
             for _, p in params]
    model.zero_grad(set_to_none=True)
    return grads


def compare(grads, reference) -> dict:
    import torch

    g, r = torch.cat([x.flatten() for x in grads]), torch.cat([x.flatten() for x in reference])
    per_tensor = [float((a - b).norm() / b.norm()) for a, b in zip(grads, reference) if b.norm() > 0]
    live = r != 0
    return {"rel_error": float((g - r).norm() / r.norm()), "cosine": float(g @ r / (g.norm() * r.norm())),
            "sign_agree": float((g[live].sign() == r[live].sign()).double().mean()),
            "worst_tensor": max(per_tensor)}


def measure(method_name: str, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from tunesmith.methods.registry import get_method
    from tunesmith.models.reference import resolve_ref
    from tunesmith.planning.params import method_options

    path = resolve_ref(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    records = json.loads(Path(args.data).read_text())[: args.samples]
    texts = ["\n".join(x for x in (r.get("instruction", ""), r.get("input", ""), r.get("output", "")) if x)
             for r in records]
    batch = dict(tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=args.max_length))
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    method = get_method(method_name)
    values = {}
    if method_name == "ptuning_v2" and args.init_text is not None:
        values["init_text"] = None if args.init_text == "none" else args.init_text
    opts = method_options(method_name, values)
    model = method.prepare(model, opts, gradient_checkpointing=False, total_steps=10)
    method.initialise(model, opts, tokenizer)  # as training does (P-tuning v2's prefixes from a text)
    model.eval()  # no dropout: the three passes must differ by precision only
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    bf16 = gradients(model, params, batch, "bf16")
    fp32 = gradients(model, params, batch, "fp32")
    model.double()
    fp64 = gradients(model, params, batch, "fp64")
    return {"method": method_name, "trainable": sum(p.numel() for _, p in params),
            "bf16": compare(bf16, fp64), "fp32": compare(fp32, fp64),
            "bf16_autocast_safe": method.bf16_autocast_safe(opts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--init-text", default=None, help="P-tuning v2's init_text ('none': PEFT's random prefixes)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    torch.set_num_threads(args.threads)
    rows = []
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("methods", total=len(args.methods.split(",")))
        for name in args.methods.split(","):
            progress.update(task, description=name)
            rows.append(measure(name, args))
            progress.advance(task)
    sys.path.insert(0, str(ROOT))
    from tunesmith.hardware import cpu_model  # the CPU named in the conditions
    conditions = (f"model {Path(args.model).name}, {args.samples} samples of {Path(args.data).name} up to "
                  f"{args.max_length} tokens, gradients at initialisation, eval mode (no dropout), reference float64; "
                  f"torch {torch.__version__}, {cpu_model()}, {args.threads} threads")
    table = Table(title="Gradient error under bf16 autocast, per method", caption=conditions)
    for header in ("method", "trainable", "bf16 rel. error", "bf16 cosine", "bf16 sign agree",
                   "bf16 worst tensor", "fp32 rel. error", "bf16 autocast safe"):
        table.add_column(header, justify="left" if header == "method" else "right")
    for r in rows:
        b, f = r["bf16"], r["fp32"]
        table.add_row(r["method"], f"{r['trainable']:,}", f"{b['rel_error']:.3f}", f"{b['cosine']:.4f}",
                      f"{b['sign_agree']:.3f}", f"{b['worst_tensor']:.3f}", f"{f['rel_error']:.1e}",
                      "yes" if r["bf16_autocast_safe"] else "no (auto trains fp32 on CPU)")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
