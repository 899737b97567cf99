"""Merge speed and memory: tunesmith vs mergekit vs the reference's load-everything approach, one run, same inputs.

Inputs: three random-initialised Llama-shaped checkpoints (a base and two "experts" = base + noise), fp32,
each ~660 MB in several safetensors shards (written once under --workdir). The merge is TIES (density 0.5 / 0.3,
then sign election and disjoint mean) — the heaviest of the deterministic methods; `--method linear` is also
offered. Each contender runs as its own process; wall time is measured around it, CPU time (user + system,
all threads) and peak memory (peak resident set, ru_maxrss, which includes memory-mapped file pages it touched)
come from wait4. On a machine shared with other jobs wall time mostly measures the contention, so CPU time is
reported beside it; `--repeat N` runs the contenders round-robin N times and reports each one's median.
The file cache is warmed before the first contender so none pays the first disk read alone.
This process never imports torch: on Linux a child's ru_maxrss starts from its parent's high-water mark (exec keeps
it, and subprocess spawns with vfork), so a parent holding the checkpoints it wrote would lift every contender's
peak; the checkpoints are written by a child process of their own.

mergekit comes from its own venv (see benchmarks/merge_parity.py); it is never a tunesmith dependency.
Run:  python benchmarks/merge.py [--workdir /tmp/merge-bench] [--method ties|linear] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
             num_attention_heads=16, num_key_value_heads=16)

NAIVE = r'''
import sys, torch
from transformers import AutoModelForCausalLM
sys.path.insert(0, sys.argv[5])
from tunesmith.merging.methods import TensorParams, get_method
base_path, a_path, b_path, out = sys.argv[1:5]
method, dens = sys.argv[6], [0.5, 0.3]
# The reference's way: whole models in memory, state-dict arithmetic, save_pretrained.
models = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32) for p in (base_path, a_path, b_path)]
states = [m.state_dict() for m in models]
m = get_method(method)
merged = {}
for name in states[0]:
    p = TensorParams(name, [1.0, 1.0], dens if method == "ties" else [1.0, 1.0], dict(m.options))
    base = states[0][name] if method == "ties" else None
    merged[name] = m.merge([states[1][name].clone(), states[2][name].clone()], base, p)
models[0].load_state_dict(merged)
models[0].save_pretrained(out, max_shard_size="2GB")
'''


def checkpoint_folders(workdir: Path) -> list[Path]:
    folders = [workdir / label for label in ("base", "expert_a", "expert_b")]
    if not all((f / "model.safetensors.index.json").is_file() for f in folders):
        subprocess.run([sys.executable, __file__, "--make-checkpoints", "--workdir", str(workdir)], check=True)
    return folders


def make_checkpoints(workdir: Path) -> list[Path]:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    config = LlamaConfig(**SHAPE, tie_word_embeddings=False, dtype="float32", architectures=["LlamaForCausalLM"])
    names = {"model.embed_tokens.weight": (SHAPE["vocab_size"], SHAPE["hidden_size"]),
             "model.norm.weight": (SHAPE["hidden_size"],), "lm_head.weight": (SHAPE["vocab_size"], SHAPE["hidden_size"])}
    h, f = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    for i in range(SHAPE["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        names.update({pre + "input_layernorm.weight": (h,), pre + "post_attention_layernorm.weight": (h,),
                      **{pre + f"self_attn.{p}_proj.weight": (h, h) for p in "qkvo"},
                      pre + "mlp.gate_proj.weight": (f, h), pre + "mlp.up_proj.weight": (f, h),
                      pre + "mlp.down_proj.weight": (h, f)})
    paths = []
    for k, label in enumerate(("base", "expert_a", "expert_b")):
        folder = workdir / label
        paths.append(folder)
        if (folder / "model.safetensors.index.json").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(0)
        noise = torch.Generator().manual_seed(k)
        shards, current, size, weight_map = [], {}, 0, {}
        for name, shape in names.items():
            tensor = torch.randn(shape, generator=g) * 0.02
            if k:
                tensor += torch.randn(shape, generator=noise) * 0.002
            current[name] = tensor
            size += tensor.numel() * 4
            if size > 150e6:
                shards.append(current)
                current, size = {}, 0
        shards.append(current) if current else None
        for s, shard in enumerate(shards):
            file = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, folder / file, metadata={"format": "pt"})
            weight_map.update({n: file for n in shard})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        config.save_pretrained(folder)
    return paths


def timed(cmd: list[str], env=None) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS GiB, exit code) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = proc.stderr.read().decode(errors="replace")  # drained while it runs, so a full pipe cannot block it
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(f"FAILED ({code}): {' '.join(cmd)}\n{err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20, code  # ru_maxrss: KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/merge-bench")
    parser.add_argument("--method", default="ties", choices=["ties", "linear"])
    parser.add_argument("--mergekit-yaml", default="/tmp/mk-venv/bin/mergekit-yaml")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tunesmith", "mergekit", "naive"])
    parser.add_argument("--repeat", type=int, default=1, help="round-robin runs per contender (median reported)")
    parser.add_argument("--make-checkpoints", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.workdir)
    if args.make_checkpoints:
        make_checkpoints(work)
        return 0
    base, a, b = checkpoint_folders(work)
    input_mb = sum(f.stat().st_size for f in a.glob("*.safetensors")) / 1e6
    for folder in (base, a, b):  # warm the file cache for everyone
        for file in folder.glob("*.safetensors"):
            with open(file, "rb") as handle:
                while handle.read(1 << 24):
                    pass
    dens = [0.5, 0.3]
    if args.method == "ties":
        ours = {"method": "ties", "base_model": str(base), "dtype": "float32",
                "models": [{"model": str(a), "density": dens[0]}, {"model": str(b), "density": dens[1]}]}
        theirs = {"merge_method": "ties", "base_model": str(base), "dtype": "float32",
                  "parameters": {"normalize": True},
                  "models": [{"model": str(a), "parameters": {"weight": 1.0, "density": dens[0]}},
                             {"model": str(b), "parameters": {"weight": 1.0, "density": dens[1]}}]}
    else:
        ours = {"method": "linear", "dtype": "float32", "models": [{"model": str(a)}, {"model": str(b)}]}
        theirs = {"merge_method": "linear", "dtype": "float32",
                  "models": [{"model": str(a), "parameters": {"weight": 1.0}},
                             {"model": str(b), "parameters": {"weight": 1.0}}]}
    (work / "ours.yaml").write_text(yaml.safe_dump(ours))
    (work / "theirs.yaml").write_text(yaml.safe_dump(theirs))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    contenders = {
        "tunesmith": [sys.executable, "-m", "tunesmith.cli.main", "merge", str(work / "ours.yaml"),
                      "--out", str(work / "out-tunesmith"), "--no-progress"],
        "mergekit": [args.mergekit_yaml, str(work / "theirs.yaml"), str(work / "out-mergekit"), "--quiet"],
        "naive": [sys.executable, "-c", NAIVE, str(base), str(a), str(b), str(work / "out-naive"), str(ROOT),
                  args.method],
    }
    runs: dict[str, list[tuple[float, float, float, int]]] = {n: [] for n in contenders if n not in args.skip}
    for _ in range(args.repeat):
        for name in runs:
            shutil.rmtree(work / f"out-{name}", ignore_errors=True)
            runs[name].append(timed(contenders[name], env))
            shutil.rmtree(work / f"out-{name}", ignore_errors=True)
    results = {name: tuple(statistics.median(r[i] for r in rs) for i in range(3)) + (max(r[3] for r in rs),)
               for name, rs in runs.items()}
    mk_version = subprocess.run([str(Path(args.mergekit_yaml).parent / "python"), "-c",
                                 "import importlib.metadata as m; print(m.version('mergekit'))"],
                                capture_output=True, text=True).stdout.strip() or "?"
    torch_version = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                                   capture_output=True, text=True).stdout.strip() or "?"
    shards = len(list(a.glob("*.safetensors")))
    print(f"\nmerge benchmark: {args.method}, 3 inputs x {input_mb:.0f} MB fp32 Llama-shaped (hidden 1024, 8 layers,"
          f" vocab 32000), {shards} shards each; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}),"
          f" load average {os.getloadavg()[0]:.1f} at the end; torch {torch_version}, mergekit {mk_version}; "
          f"warm file cache; median of {args.repeat} round-robin run(s)")
    print(f"{'tool':10} {'wall s':>7} {'CPU s':>7} {'peak RSS GiB':>13} {'wall vs mergekit':>17} "
          f"{'CPU vs mergekit':>16} {'RSS vs mergekit':>16}")
    ref = results.get("mergekit")
    for name, (wall, cpu, rss, code) in results.items():
        rel = [f"{x / y:.2f}x" if ref else "-" for x, y in zip((wall, cpu, rss), ref or (1, 1, 1))]
        print(f"{name:10} {wall:7.1f} {cpu:7.1f} {rss:13.2f} {rel[0]:>17} {rel[1]:>16} {rel[2]:>16}"
              + ("  FAILED" if code else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
