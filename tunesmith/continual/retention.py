"""The retention matrix and what it sums up.

R[i][j] is the score on task j after stage i (row 0: the starting model, before any stage; tasks and stages are
numbered from 1 in the text, from 0 in the lists). For T stages, with "better" meaning higher for a
higher-is-better score and lower for a loss:
- average score: the mean of the last row, R[T][1..T];
- backward transfer (Lopez-Paz & Ranzato, 2017): BWT = 1/(T-1) Σ_{j<T} gain(R[j][j] → R[T][j]), where gain is
  after − before for a higher-is-better score and before − after for a loss, so negative BWT means forgetting
  in both cases;
- forgetting of task j < T (Chaudhry et al., 2018): the best score it had after being learned, over stages
  j..T-1, against its final score, as a loss of ability (positive: forgotten), and the same relative to that best
  score (`evaluation.forgetting.forgetting_rate`).
"""

from __future__ import annotations

import math

from ..evaluation.forgetting import forgetting_rate

Matrix = list[list[float | None]]  # rows 0..T, columns 0..T-1; None where a task was not scored


def gain(before: float, after: float, *, lower_is_better: bool) -> float:
    return before - after if lower_is_better else after - before


def retention_summary(matrix: Matrix, *, lower_is_better: bool) -> dict:
    """{average, bwt, forgetting: [per task, None for the last], forgetting_rate: [...], average_per_stage}."""
    stages = len(matrix) - 1
    last = matrix[stages]
    best = min if lower_is_better else max
    forgetting, rates = [], []
    for j in range(stages):
        if j == stages - 1:
            forgetting.append(None)
            rates.append(None)
            continue
        peak = best(matrix[i][j] for i in range(j + 1, stages))
        forgetting.append(gain(last[j], peak, lower_is_better=lower_is_better))
        rates.append(forgetting_rate(peak, last[j], lower_is_better=lower_is_better))
    transfers = [gain(matrix[j + 1][j], last[j], lower_is_better=lower_is_better) for j in range(stages - 1)]
    return {
        "average": _mean(last[:stages]),
        "bwt": _mean(transfers) if transfers else None,
        "forgetting": forgetting,
        "forgetting_rate": rates,
        "average_per_stage": [_mean(matrix[i][:i]) if i else None for i in range(stages + 1)],
    }


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan
