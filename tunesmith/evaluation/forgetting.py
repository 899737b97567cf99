"""Catastrophic forgetting: general ability scored before and after fine-tuning, and its relative drop.

forgetting rate = (before - after) / before for a higher-is-better score (accuracy, pass rate), and
(after - before) / before for a lower-is-better one (perplexity): the share of ability lost. Negative means
the fine-tuned model got better at the general task.
"""

from __future__ import annotations

import math
from pathlib import Path


from ..config.schema import RunConfig
from ..models.loading import LoadedModel
from ..reporting import Reporter, reporter_or_default

# Above this share of general ability lost, the card and the report warn (the reference chapter's "keep
# forgetting under 10%" target).
WARN_RATE = 0.10


def forgetting_rate(before: float, after: float, *, lower_is_better: bool) -> float:
    if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        return float("nan")
    return (after - before) / before if lower_is_better else (before - after) / before


def forgetting_rows(base: dict, tuned: dict) -> list[dict]:
    """One row per general task of two suite results: task, metric, before, after, rate."""
    from .runner import LOWER_IS_BETTER, headline_metric

    rows = []
    for name, before in base["tasks"].items():
        after = tuned["tasks"].get(name)
        if not before.get("general") or after is None:
            continue
        metric = headline_metric(before)
        if metric is None or metric not in after["metrics"]:
            continue
        b, a = before["metrics"][metric], after["metrics"][metric]
        rows.append({"task": name, "metric": metric, "before": b, "after": a,
                     "rate": forgetting_rate(b, a, lower_is_better=metric in LOWER_IS_BETTER)})
    return rows


def measure_forgetting(cfg: RunConfig, model, tokenizer, template_name: str,
                       reporter: Reporter | None = None) -> list[dict]:
    """Perplexity on each `eval.general` dataset with the base and the fine-tuned model, right after training.

    An adapter is switched off to get the base (no second copy of the model); a fully fine-tuned model is
    compared with a freshly loaded base.
    """
    from .runner import evaluate_suite
    from .suite import PerplexityTask, Suite

    reporter = reporter_or_default(reporter)
    names = [Path(spec.path).stem or "general" for spec in cfg.eval.general]
    names = [n if names.count(n) == 1 else f"{n}_{i + 1}" for i, n in enumerate(names)]  # task names are unique
    tasks = [PerplexityTask(name=name, type="perplexity", data=spec.path, max_samples=spec.max_samples,
                            max_length=cfg.eval.max_length, general=True)
             for name, spec in zip(names, cfg.eval.general)]
    suite = Suite(name="forgetting", tasks=tasks)
    was_training = model.training
    model.eval()
    try:
        tuned = evaluate_suite(LoadedModel(model, tokenizer, template_name, {}), suite, label="fine-tuned",
                               reporter=reporter)
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                base = evaluate_suite(LoadedModel(model, tokenizer, template_name, {}), suite, label="base",
                                      reporter=reporter)
        else:
            from ..models.loading import load_model

            base_model = load_model(cfg.model).to(next(model.parameters()).device).eval()
            base = evaluate_suite(LoadedModel(base_model, tokenizer, template_name, {}), suite, label="base",
                                  reporter=reporter)
            del base_model
    finally:
        model.train(was_training)
    rows = forgetting_rows(base, tuned)
    for row in rows:
        reporter.info(f"forgetting on {row['task']}: {row['metric']} {row['before']:.4g} -> {row['after']:.4g} "
                      f"({100 * row['rate']:+.1f}%)")
    return rows


def card_section(rows: list[dict] | None) -> list[str]:
    """Model-card lines (Markdown) for the forgetting measured after training; empty when none was."""
    if not rows:
        return []
    lines = ["## General ability (forgetting)", "",
             "Scored on general data before (base model) and after fine-tuning. Forgetting rate = relative loss "
             "of ability (for perplexity: its relative rise); negative means it improved.", "",
             "| data | metric | base | fine-tuned | forgetting rate |", "|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['metric']} | {r['before']:.4g} | {r['after']:.4g} | {100 * r['rate']:+.1f}% |"
              for r in rows]
    worst = max((r["rate"] for r in rows if math.isfinite(r["rate"])), default=0.0)
    if worst > WARN_RATE:
        lines += ["", f"**Warning:** the worst forgetting rate is {100 * worst:+.1f}%, above the "
                      f"{100 * WARN_RATE:.0f}% target. Mix general data into training (`data.train` with a "
                      "`weight`), lower the learning rate or the number of epochs, or use a smaller LoRA rank."]
    return lines + [""]
