"""Rich tables for `tunesmith plan`: parameter counts, the memory breakdown, proposals."""

from __future__ import annotations

from rich.table import Table

from ..planning.memory import MemoryPlan
from ..planning.units import human


def counts_table(plan: MemoryPlan, model_name: str) -> Table:
    c, r = plan.counts, plan.request
    table = Table(title=f"{r.method} on {model_name}", show_header=False)
    table.add_row("total parameters", f"{c.total:,}")
    share = f" ({100 * c.trainable / c.total:.4f}%)" if c.total else ""
    table.add_row("trainable parameters", (f"{c.trainable:,}" + share) if c.exact else "unknown")
    if c.quantized:
        table.add_row("4-bit quantised", f"{c.quantized:,}")
    return table


def memory_table(plan: MemoryPlan) -> Table:
    r = plan.request
    scope = f" per device ({r.devices} devices, ZeRO-{r.zero_stage})" if r.devices > 1 else ""
    title = (f"peak memory{scope}: batch {r.batch} x seq {r.seq}, grad accum {r.grad_accum}, "
             f"{'checkpointing' if r.gradient_checkpointing else 'no checkpointing'}, {plan.optimizer}, "
             f"{str(r.compute_dtype()).removeprefix('torch.')} on {r.device}")
    table = Table(title=title)
    table.add_column("component")
    table.add_column("memory", justify="right")
    for name, value in plan.components().items():
        table.add_row(name, human(value))
    table.add_row(f"[bold]predicted peak[/] ({plan.peak_phase})", f"[bold]{human(plan.peak)}[/]")
    return table


def proposals_table(proposals, budget: float) -> Table:
    table = Table(title=f"configurations that fit {human(budget)}, fastest first")
    for col in ("#", "method", "rank", "batch", "seq", "checkpointing", "precision", "predicted peak", "why"):
        table.add_column(col, justify="right" if col in ("#", "batch", "seq", "predicted peak") else "left")
    for i, p in enumerate(proposals, 1):
        table.add_row(str(i), p.method, str(p.rank or "-"), str(p.batch), str(p.seq),
                      "yes" if p.gradient_checkpointing else "no", p.precision, human(p.peak), p.reason)
    return table
