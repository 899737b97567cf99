"""Before/after: the same suite through a base and a fine-tuned model, metric by metric."""

from __future__ import annotations

import math

from .forgetting import forgetting_rows
from .metrics.judge import judge_head_to_head
from .runner import LOWER_IS_BETTER, headline_metric, judge_settings


def compare_results(base: dict, tuned: dict) -> dict:
    """{"base", "tuned" (labels), "rows": [{task, metric, before, after, delta, improved, headline}],
    "forgetting": rows of `forgetting_rows`}."""
    rows = []
    for name, before in base["tasks"].items():
        after = tuned["tasks"].get(name)
        if after is None:
            continue
        headline = headline_metric(before)
        for metric, b in before["metrics"].items():
            a = after["metrics"].get(metric)
            if not isinstance(b, (int, float)) or not isinstance(a, (int, float)):
                continue
            delta = a - b
            improved = None if not math.isfinite(delta) or delta == 0 else \
                (delta < 0) == (metric in LOWER_IS_BETTER)
            rows.append({"task": name, "metric": metric, "before": b, "after": a, "delta": delta,
                         "improved": improved, "headline": metric == headline})
    return {"base": base["model"], "tuned": tuned["model"], "rows": rows, "forgetting": forgetting_rows(base, tuned)}


def head_to_head(suite, base: dict, tuned: dict, reporter) -> list[dict]:
    """Each generation task with a judge (and `head_to_head` on): the judge compares the two models' replies to
    every prompt, in both orders. A row per task: {task, judge, win_rate (the tuned model's), wins, ties, losses,
    unparsed, consistency}; each tuned sample gets its score and the judge's two replies."""
    rows = []
    for task in suite.tasks:
        judge = getattr(task, "judge", None)
        if judge is None or not judge.head_to_head or task.name not in base["tasks"]:
            continue
        mine, theirs = tuned["tasks"][task.name]["samples"], base["tasks"][task.name]["samples"]
        with reporter.status(f"judging {task.name} head to head with {judge.model} ({2 * len(mine)} comparisons)"):
            judged = judge_head_to_head(judge_settings(judge), [s["prompt"] for s in mine],
                                        [s["reference"] for s in mine], [s["reply"] for s in mine],
                                        [s["reply"] for s in theirs])
        rows.append({"task": task.name, "judge": judge.model,
                     **{k: judged[k] for k in ("win_rate", "wins", "ties", "losses", "unparsed", "consistency")}})
        for sample, score, raw in zip(mine, judged["scores"], judged["raw"]):
            sample["head_to_head"] = {"score": score, "judge": raw}
    return rows
