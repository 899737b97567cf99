"""Budget proposals: configurations that fit a memory budget, following the reference chapter's decision rules.

Rules (chapter 1, "PEFT方法选择指南" and its FAQ): memory first -- QLoRA when the budget is tight, LoRA as the
default, DoRA when there is room and the best quality matters; full fine-tuning only with plenty of memory and a
large dataset (>~1M samples); a latency-sensitive deployment prefers adapters that merge into the weights (LoRA,
DoRA) over QLoRA. Rank by task type (FAQ 3): simple classification r=4-8, instructions/chat r=8-16, reasoning or
code r=16-32, translation r=16-32, cross-domain transfer r=32-64.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .memory import MemoryPlan, PlanRequest, plan_memory

RANK_BY_TASK = {"classification": 8, "chat": 16, "reasoning": 32, "translation": 32, "domain": 64}
# Relative compute per token (forward = 1): frozen weights need no weight gradients; DoRA recomputes weight norms,
# QLoRA dequantises every weight in forward and backward; checkpointing adds one forward. Used only to order
# proposals; the time probe measures real throughput.
COST = {"full": 3.0, "lora": 2.1, "rslora": 2.1, "dora": 2.6, "qlora": 2.8}
BATCHES = (16, 8, 4, 2, 1)


@dataclass
class Proposal:
    method: str
    rank: int | None
    batch: int
    seq: int
    gradient_checkpointing: bool
    precision: str
    peak: float
    reason: str
    cost: float


def candidate_methods(budget: float, full_plan: MemoryPlan | None, samples: int | None, low_latency: bool,
                      best_quality: bool) -> list[tuple[str, str]]:
    methods = [("lora", "default choice (reference: LoRA first)")]
    if best_quality:
        methods.insert(0, ("dora", "best quality asked for; DoRA +2-4% at some speed cost"))
    else:
        methods.append(("dora", "more quality for some speed"))
    if not low_latency:
        methods.append(("qlora", "smallest memory: 4-bit base"))
    if full_plan is not None and samples and samples >= 1_000_000:
        methods.insert(0, ("full", "large dataset (>1M samples): full fine-tuning may gain more"))
    return methods


def propose(config, base: PlanRequest, budget: float, *, task: str = "chat", samples: int | None = None,
            low_latency: bool = False, best_quality: bool = False, limit: int = 6, progress=None) -> list[Proposal]:
    rank = RANK_BY_TASK.get(task, 16)
    seqs = [base.seq] + [s for s in (base.seq // 2, base.seq // 4) if s >= 128]
    full_plan = None
    if samples and samples >= 1_000_000:
        full_plan = plan_memory(config, replace(base, method="full", method_options={}, batch=1))
    found: list[Proposal] = []
    for method, reason in candidate_methods(budget, full_plan, samples, low_latency, best_quality):
        options = {} if method == "full" else {"r": rank, "alpha": 2 * rank}
        for checkpointing in (False, True):
            for seq in seqs:
                if progress:
                    progress(f"{method}, seq {seq}, {'with' if checkpointing else 'no'} checkpointing")
                plan = plan_memory(config, replace(base, method=method, method_options=options, batch=1, seq=seq,
                                                   gradient_checkpointing=checkpointing))
                fitting = [b for b in BATCHES if plan.peak_at_batch(b)[0] <= budget]
                if fitting:
                    batch = fitting[0]
                    note = reason if seq == base.seq else f"{reason}; shorter sequences ({seq}) to fit"
                    cost = (COST.get(method, 2.5) + (1.0 if checkpointing else 0.0)) * (1 + 1 / batch)
                    found.append(Proposal(method, rank if method != "full" else None, batch, seq, checkpointing,
                                          str(base.compute_dtype()).removeprefix("torch."),
                                          plan.peak_at_batch(batch)[0], note, cost))
                    break  # the longest sequence that fits, for this method and checkpointing choice
    # Requested sequence length first, then expected speed.
    found.sort(key=lambda p: (p.seq != base.seq, p.cost))
    return found[:limit]
