"""Parity with mergekit: same tiny models, same configs, tensors compared side by side.

mergekit is never a tunesmith dependency: it lives in its own virtual environment, created once with
    python -m venv /tmp/mk-venv && /tmp/mk-venv/bin/pip install torch==2.13.0 && /tmp/mk-venv/bin/pip install mergekit
Run:  python benchmarks/merge_parity.py [--mergekit-yaml /tmp/mk-venv/bin/mergekit-yaml]

Deterministic methods (linear, SLERP with a gradient and a filter, task arithmetic with a negative weight,
TIES) must agree to fp32 rounding. DARE draws random masks (mergekit's from torch's global RNG, tunesmith's
seeded per tensor), so the check is statistical: the share of dropped entries, and the mean and spread of the
merged task vector per tensor against the undropped task-arithmetic result.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tunesmith.merging import merge, parse_config  # noqa: E402
from tunesmith.merging.checkpoint import Checkpoint  # noqa: E402


def make_models(root: Path) -> dict[str, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    paths = {"base": root / "base"}
    base.save_pretrained(paths["base"], max_shard_size="200KB")
    for i, name in enumerate(("a", "b", "c")):
        model = LlamaForCausalLM(config)
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for (key, p), bp in zip(model.named_parameters(), base.parameters()):
                p.copy_(bp + 0.02 * torch.randn(p.shape, generator=g))
        paths[name] = root / name
        model.save_pretrained(paths[name], max_shard_size="200KB")
    return paths


def cases(p: dict[str, Path]) -> list[tuple[str, dict, dict]]:
    """(label, tunesmith config, mergekit config)."""
    a, b, c, base = str(p["a"]), str(p["b"]), str(p["c"]), str(p["base"])
    t = [{"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]}, {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0]},
         {"value": [0.2, 0.9]}]  # a gradient on the default too: embeddings, final norm and head take its start
    return [
        ("linear", {"method": "linear", "models": [{"model": a, "weight": 0.5}, {"model": b, "weight": 0.3},
                                                   {"model": c, "weight": 0.2}]},
         {"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 0.5}},
                                               {"model": b, "parameters": {"weight": 0.3}},
                                               {"model": c, "parameters": {"weight": 0.2}}]}),
        ("slerp", {"method": "slerp", "models": [{"model": a}, {"model": b}], "parameters": {"t": t}},
         {"merge_method": "slerp", "base_model": a, "models": [{"model": a}, {"model": b}], "parameters": {"t": t}}),
        ("task_arithmetic", {"method": "task_arithmetic", "base_model": base, "parameters": {"scale": 0.8},
                             "models": [{"model": a, "weight": 1.2}, {"model": b, "weight": 1.0},
                                        {"model": c, "weight": -0.5}]},
         {"merge_method": "task_arithmetic", "base_model": base, "parameters": {"lambda": 0.8},
          "models": [{"model": a, "parameters": {"weight": 1.2}}, {"model": b, "parameters": {"weight": 1.0}},
                     {"model": c, "parameters": {"weight": -0.5}}]}),
        ("ties", {"method": "ties", "base_model": base,
                  "models": [{"model": a, "weight": 1.0, "density": 0.5}, {"model": b, "weight": 0.7, "density": 0.3},
                             {"model": c, "weight": 0.5, "density": 0.8}]},
         {"merge_method": "ties", "base_model": base, "parameters": {"normalize": True},
          "models": [{"model": a, "parameters": {"weight": 1.0, "density": 0.5}},
                     {"model": b, "parameters": {"weight": 0.7, "density": 0.3}},
                     {"model": c, "parameters": {"weight": 0.5, "density": 0.8}}]}),
        ("dare_linear", {"method": "dare_linear", "base_model": base,
                         "models": [{"model": a, "weight": 0.6, "density": 0.3},
                                    {"model": b, "weight": 0.4, "density": 0.5}]},
         {"merge_method": "dare_linear", "base_model": base,
          "models": [{"model": a, "parameters": {"weight": 0.6, "density": 0.3}},
                     {"model": b, "parameters": {"weight": 0.4, "density": 0.5}}]}),
        ("dare_ties", {"method": "dare_ties", "base_model": base, "parameters": {"normalize": True},
                       "models": [{"model": a, "weight": 1.0, "density": 0.3}, {"model": b, "weight": 1.0,
                                                                                   "density": 0.5}]},
         {"merge_method": "dare_ties", "base_model": base, "parameters": {"normalize": True},
          "models": [{"model": a, "parameters": {"weight": 1.0, "density": 0.3}},
                     {"model": b, "parameters": {"weight": 1.0, "density": 0.5}}]}),
    ]


def load(folder: Path) -> dict[str, torch.Tensor]:
    ck = Checkpoint(folder)
    state = {n: ck.read(n).double() for n in ck.tensors}
    ck.close()
    return state


def dare_stats(merged: dict, base: dict) -> tuple[float, float]:
    """Share of parameters left at the base value, and the mean |merged − base| (both over float tensors)."""
    zero = total = 0
    size = 0.0
    for name, value in merged.items():
        delta = value - base[name]
        zero += int((delta == 0).sum())
        total += delta.numel()
        size += float(delta.abs().sum())
    return zero / total, size / total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit-yaml", default="/tmp/mk-venv/bin/mergekit-yaml")
    args = parser.parse_args()
    if not Path(args.mergekit_yaml).is_file():
        print(f"mergekit not found at {args.mergekit_yaml}; create its venv as the docstring says")
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_models(root)
        base = load(paths["base"])
        for label, ours, theirs in cases(paths):
            merge(parse_config({**ours, "dtype": "float32"}), root / f"ts-{label}", progress=False)
            mk_cfg = root / f"{label}.yaml"
            mk_cfg.write_text(yaml.safe_dump({**theirs, "dtype": "float32"}))
            subprocess.run([args.mergekit_yaml, str(mk_cfg), str(root / f"mk-{label}"), "--quiet"], check=True,
                           capture_output=True)
            ts, mk = load(root / f"ts-{label}"), load(root / f"mk-{label}")
            assert set(ts) == set(mk), f"{label}: tensor names differ: {set(ts) ^ set(mk)}"
            if label.startswith("dare"):
                (z1, m1), (z2, m2) = dare_stats(ts, base), dare_stats(mk, base)
                ok = abs(z1 - z2) < 0.01 and abs(m1 / m2 - 1) < 0.02
                rows.append((label, f"unchanged share {z1:.4f} vs {z2:.4f}; mean|Δ| {m1:.3e} vs {m2:.3e}", ok))
            else:
                worst = max(float((ts[n] - mk[n]).abs().max()) for n in ts)
                scale = max(float(mk[n].abs().max()) for n in mk)
                ok = worst <= 1e-6 * max(scale, 1.0)
                rows.append((label, f"max |tunesmith − mergekit| = {worst:.2e} (max |w| {scale:.2f})", ok))
    version = subprocess.run([str(Path(args.mergekit_yaml).parent / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('mergekit'))"],
                             capture_output=True, text=True).stdout.strip()
    print(f"\nparity with mergekit {version}: tiny Llama (4 layers, hidden 64, fp32, sharded), "
          f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}")
    print(f"{'method':16} {'result':70} pass")
    for label, text, ok in rows:
        print(f"{label:16} {text:70} {'yes' if ok else 'NO'}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
