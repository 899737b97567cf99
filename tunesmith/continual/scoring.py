"""Score a model on the tasks seen so far with tunesmith's evaluation code: each task's held-out file is a
perplexity task over response tokens (`evaluation.suite.PerplexityTask`, kind instruct), run by
`evaluation.runner.evaluate_suite` on the model as `load_for_inference` opens it."""

from __future__ import annotations

import gc
from pathlib import Path

from ..evaluation.runner import evaluate_suite
from ..evaluation.suite import PerplexityTask, Suite
from ..models.loading import load_for_inference
from ..reporting import Reporter
from .config import Evaluation


def task_suite(tasks: dict[str, Path], evaluation: Evaluation, max_length: int) -> Suite:
    return Suite(name="continual", tasks=[
        PerplexityTask(name=name, type="perplexity", kind="instruct", data=str(file), max_samples=evaluation.max_samples,
                       max_length=max_length, batch_size=evaluation.batch_size)
        for name, file in tasks.items()])


def score_model(model: str, tasks: dict[str, Path], evaluation: Evaluation, *, template: str, max_length: int,
                label: str, reporter: Reporter) -> dict[str, float]:
    """{task: score} of `model` (a run folder or a model folder/name) on each task's held-out file."""
    with reporter.status(f"loading {label} for evaluation"):
        loaded = load_for_inference(model, dtype="float32", template=template)
    result = evaluate_suite(loaded, task_suite(tasks, evaluation, max_length), label=label, reporter=reporter)
    del loaded
    gc.collect()
    return {name: task["metrics"][evaluation.metric] for name, task in result["tasks"].items()}
