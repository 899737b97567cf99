"""Before/after: the same suite through a base and a fine-tuned model, metric by metric."""

from __future__ import annotations

import math

from .forgetting import forgetting_rows
from .runner import LOWER_IS_BETTER, headline_metric


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
