"""Data doctor cost per stage, and near-duplicate search: MinHash/LSH (what `data check` / `data dedup` use)
against the plain baseline, exact Jaccard over all pairs, on the same shingles.

Corpus: ../shared/data/instruct/alpaca_zh_demo.json + alpaca_en_demo.json (1,699 records) plus planted near
duplicates: `--planted` records copied from the corpus with light edits (punctuation swapped, one word or
character changed, whitespace) — the kind of copy a scraped or generated set holds. Recall is measured against
the baseline's pairs at the same Jaccard threshold, so it shows what LSH misses, not what the threshold misses.
Run:  python benchmarks/data_doctor.py [--planted 150] [--threshold 0.8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunesmith.data.doctor.duplicates import conversation_text, jaccard, near_duplicate_pairs
from tunesmith.data.doctor.run import CheckOptions, run_check
from tunesmith.data.doctor.schema import load_samples
from tunesmith.data.doctor.text import shingles

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruct"
FILES = ["alpaca_zh_demo.json", "alpaca_en_demo.json"]


def _edit(text: str, rng: random.Random) -> str:
    """A light edit: swap punctuation, change one word/character, or add spaces."""
    choice = rng.randrange(3)
    if choice == 0:
        return text.replace("。", "！", 1).replace(".", "!", 1).replace("，", ",", 1)
    if choice == 1:
        cut = rng.randrange(len(text)) if text else 0
        return text[:cut] + rng.choice("的了是 a the") + text[cut + 1:]
    return "  " + text.replace(" ", "  ", 3) + " "


def stage_times(path: str) -> dict[str, float]:
    marks: list[tuple[str, float]] = []
    run_check(path, CheckOptions(), progress=lambda name: marks.append((name, time.perf_counter())))
    marks.append(("end", time.perf_counter()))
    return {name: marks[i + 1][1] - at for i, (name, at) in enumerate(marks[:-1])}


def brute_force_pairs(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    sets = [shingles(t) for t in texts]
    return {(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))
            if sets[i] and sets[j] and jaccard(sets[i], sets[j]) >= threshold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planted", type=int, default=150)
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    console = Console()

    table = Table(title="data check: seconds per stage (no tokenizer)")
    stages = ["schema", "statistics", "diversity", "accuracy", "consistency", "duplicates"]
    for column in ["file", "records", *stages, "total", "records/s"]:
        table.add_column(column, justify="right" if column != "file" else "left")
    for name in FILES:
        times = stage_times(str(SHARED / name))
        records = len(json.loads((SHARED / name).read_text(encoding="utf-8")))
        total = sum(times.values())
        table.add_row(name, str(records), *[f"{times[s]:.2f}" for s in stages], f"{total:.2f}",
                      f"{records / total:.0f}")
    console.print(table)

    rng = random.Random(0)
    texts = [conversation_text(s.messages) for name in FILES for s in load_samples(str(SHARED / name))[0]]
    originals = rng.sample(range(len(texts)), args.planted)
    texts += [_edit(texts[i], rng) for i in originals]
    start = time.perf_counter()
    exact = brute_force_pairs(texts, args.threshold)
    brute_s = time.perf_counter() - start
    start = time.perf_counter()
    lsh = {(i, j) for i, j, _ in near_duplicate_pairs(texts, args.threshold)}
    lsh_s = time.perf_counter() - start
    found = len(lsh & exact)
    table = Table(title=f"near duplicates among {len(texts)} texts ({args.planted} planted), Jaccard >= "
                        f"{args.threshold} on character 5-grams")
    for column in ["method", "pairs compared", "pairs found", "recall vs all pairs", "false pairs", "seconds"]:
        table.add_column(column, justify="right" if column != "method" else "left")
    n = len(texts)
    table.add_row("all pairs, exact Jaccard (baseline)", f"{n * (n - 1) // 2:,}", str(len(exact)), "1.000", "0",
                  f"{brute_s:.2f}")
    table.add_row("MinHash/LSH (128 perm, tuned 0.1 below) + exact check", "LSH candidates", str(len(lsh)),
                  f"{found / len(exact):.3f}" if exact else "-", str(len(lsh - exact)), f"{lsh_s:.2f}")
    console.print(table)
    load = os.getloadavg()[0]
    console.print(f"conditions: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                  f"load average {load:.1f} at the end (cores shared with other jobs when that exceeds the core "
                  f"count), Python {platform.python_version()}, datasketch MinHashLSH")


if __name__ == "__main__":
    main()
