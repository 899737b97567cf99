"""`tunesmith analyze RUN`: how much of its rank a LoRA run's update uses, and which `r` to train with next."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  tunesmith analyze runs/lora                          table, plot and suggested rank (90% of the energy)
  tunesmith analyze runs/lora --threshold 0.95 --out reports/rank
  tunesmith analyze runs/lora/checkpoints/checkpoint-200
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="per-layer SVD of a LoRA run's learned update: energy per rank, effective rank, "
                        "suggested r", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Reads the adapter's safetensors (no model is loaded), takes the SVD of ΔW = B·A·scaling in "
                    "every adapted module, and writes lora_rank.png, lora_rank.md and lora_rank.json "
                    "(see docs/evaluation.md).")
    p.add_argument("run", help="run or checkpoint folder holding adapter_config.json and adapter_model.safetensors")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="share of the update's energy a rank must capture (default 0.9)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/analysis)")
    p.set_defaults(func=run_analyze)


def run_analyze(args) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from ..diagnostics.lora_rank import analyze_adapter, markdown_table, plot_rank_analysis
    from ..io import atomic_write_json, atomic_write_text

    console = Console(stderr=True)
    with console.status(f"SVD of the LoRA update in {args.run}"):
        analysis = analyze_adapter(args.run, threshold=args.threshold)
    out = Path(args.out) if args.out else Path(args.run) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    plot_rank_analysis(analysis, out / "lora_rank.png")
    atomic_write_json(out / "lora_rank.json", analysis.to_dict())
    share = f"{100 * analysis.threshold:.0f}%"
    atomic_write_text(out / "lora_rank.md", f"# LoRA rank analysis: {args.run}\n\n![energy per rank](lora_rank.png)"
                                            f"\n\nSuggested rank: **{analysis.suggested_rank}** (trained with "
                                            f"r={analysis.r}). {analysis.advice}.\n\n{markdown_table(analysis)}\n")

    # The terminal gets one row per module kind (a 30-layer model has ~200 modules); every module is in the files.
    table = Table(title=f"LoRA update rank: {args.run} (r={analysis.r})")
    for col in ("module kind", "modules", "effective rank (median)", f"rank for {share} (median / max)",
                "energy at r/2 (median)"):
        table.add_column(col)
    for kind in sorted({layer.kind for layer in analysis.layers}):
        chosen = [layer for layer in analysis.layers if layer.kind == kind]
        eff = sorted(layer.effective_rank for layer in chosen)
        need = sorted(layer.rank_at_threshold for layer in chosen)
        half = sorted(layer.energy[max(layer.r // 2, 1) - 1] for layer in chosen)
        mid = len(chosen) // 2
        table.add_row(kind, str(len(chosen)), f"{eff[mid]:.2f}", f"{need[mid]} / {need[-1]}", f"{half[mid]:.3f}")
    console.print(table)
    console.print(f"suggested rank: [bold]{analysis.suggested_rank}[/] — {analysis.advice}")
    console.print(f"[green]wrote[/] {out / 'lora_rank.png'}, {out / 'lora_rank.md'}, {out / 'lora_rank.json'}")
    return 0
