"""Run a suite on one model: every task's metrics plus the per-sample outputs behind them."""

from __future__ import annotations

import math
from pathlib import Path

from ..data.formats import user_text
from ..data.preference import render
from ..data.templates.registry import get_template
from ..inference.generation import Generator, SamplingOptions
from ..errors import ConfigError
from ..models.loading import LoadedModel, load_for_inference, read_run_meta
from ..reporting import Reporter, reporter_or_default
from ..tasks.preference.accuracy import preference_accuracy, reward_accuracy
from .data import (load_classification, load_conversations, load_generation_items, load_pairs, load_texts,
                   perplexity_kind)
from .metrics.classification import classification_scores, parse_label
from .metrics.generation import generation_scores
from .metrics.instruction import check_name, run_check
from .metrics.judge import DEFAULT_RUBRIC, JudgeSettings, judge_replies
from .metrics.perplexity import conversation_examples, score_examples, text_examples
from .suite import ClassificationTask, GenerationTask, PerplexityTask, PreferenceTask, Suite

# Which direction is better, for reports and the forgetting rate.
LOWER_IS_BETTER = {"loss", "perplexity", "unparsed_rate", "judge_unparsed"}
HEADLINE = {"perplexity": "perplexity", "generation": None, "classification": "accuracy", "preference": "accuracy"}


def load_evaluated(ref: str, *, dtype: str = "auto", template: str | None = None,
                   trust_remote_code: bool = False) -> LoadedModel:
    """The model a suite runs on: `load_for_inference`'s, or for a `task: reward` run its sequence classifier
    with the score head (which a causal LM loader would leave out)."""
    meta = read_run_meta(ref) if Path(ref).is_dir() else None
    if meta is None or meta.get("task") != "reward":
        return load_for_inference(ref, dtype=dtype, template=template, trust_remote_code=trust_remote_code)
    from ..tasks.classification.inference import load_classifier

    classifier = load_classifier(ref, dtype=dtype, trust_remote_code=trust_remote_code, task="reward")
    return LoadedModel(classifier.model, classifier.tokenizer, template or meta["template"], meta)


def check_suite_for(meta: dict | None, suite: Suite) -> None:
    """A reward model scores text and generates none: only preference tasks run on it."""
    if meta and meta.get("task") == "reward":
        other = [t.name for t in suite.tasks if not isinstance(t, PreferenceTask)]
        if other:
            raise ConfigError(f"a reward model runs only `type: preference` tasks; the suite also has {other}",
                              where="--suite", hint="use a suite of preference tasks (examples/eval_preference.yaml)")


def headline_metric(task_result: dict) -> str | None:
    """The one number that sums a task up: perplexity, accuracy; for generation the judge score, else ROUGE-L
    (or another reference metric), else the check pass rate (checks alone are often simple format rules)."""
    metrics = task_result["metrics"]
    if HEADLINE.get(task_result["type"]):
        return HEADLINE[task_result["type"]]
    for name in ("judge_score", "rouge_l", "chrf", "exact_match", "bleu", "check_pass_rate"):
        if name in metrics:
            return name
    return None


def evaluate_suite(loaded: LoadedModel, suite: Suite, *, label: str = "model",
                   reporter: Reporter | None = None) -> dict:
    """{"model": label, "suite": name, "tasks": {name: {type, general, metrics, samples}}}. `reporter` shows
    each task's progress and its metrics."""
    reporter = reporter_or_default(reporter)
    generator = Generator(loaded)
    results = {}
    for task in suite.tasks:
        def progress(total: int, task=task):
            """The task's progress bar, opened once its number of samples is known."""
            return reporter.progress(f"{label}: {task.name}", total)

        if isinstance(task, PerplexityTask):
            result = _perplexity(loaded, task, progress)
        elif isinstance(task, PreferenceTask):
            result = _preference(loaded, task, progress)
        elif isinstance(task, GenerationTask):
            result = _generation(generator, suite, task, progress, reporter)
        else:
            result = _classification(generator, suite, task, progress)
        results[task.name] = {"type": task.type, "general": task.general, **result}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items()
                          if isinstance(v, float) and math.isfinite(v))
        reporter.info(f"  {label} · {task.name}: {shown}")
    return {"model": label, "suite": suite.name, "tasks": results}


def _perplexity(loaded: LoadedModel, task: PerplexityTask, progress) -> dict:
    tokenizer = loaded.tokenizer
    kind = perplexity_kind(task)
    if kind == "text":
        examples = text_examples(tokenizer, load_texts(task.data, task.text_field, task.max_samples),
                                 task.max_length, task.max_windows)
    else:
        template = get_template(loaded.template_name, tokenizer)
        examples = conversation_examples(tokenizer, template, load_conversations(task.data, task.max_samples),
                                         task.max_length)
    with progress(len(examples)) as advance:
        scores = score_examples(loaded.model, examples, pad_id=tokenizer.pad_token_id or 0,
                                batch_size=task.batch_size, on_batch=advance)
    return {"kind": kind, "metrics": {"loss": scores["loss"], "perplexity": scores["perplexity"]},
            "tokens": scores["tokens"], "samples": []}


def _generate_all(generator: Generator, conversations, options: SamplingOptions, batch_size: int,
                  advance) -> list[str]:
    replies: list[str] = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start:start + batch_size]
        replies += generator.generate(chunk, options)
        advance(len(chunk))
    return replies


def _options(suite: Suite, max_new_tokens: int | None) -> SamplingOptions:
    g = suite.generation
    return SamplingOptions(max_new_tokens=max_new_tokens or g.max_new_tokens, temperature=g.temperature,
                           seed=g.seed)


def _generation(generator: Generator, suite: Suite, task: GenerationTask, progress, reporter: Reporter) -> dict:
    items = load_generation_items(task)
    with progress(len(items)) as advance:
        replies = _generate_all(generator, [i.messages for i in items], _options(suite, task.max_new_tokens),
                                suite.generation.batch_size, advance)
    metrics: dict[str, float] = {}
    with_ref = [(r, i.reference) for r, i in zip(replies, items) if i.reference is not None]
    if task.metrics and with_ref:
        metrics.update(generation_scores([r for r, _ in with_ref], [ref for _, ref in with_ref], task.metrics))
    # The prompt as the user wrote it (an Alpaca `input` included), for the report and the judge.
    samples = [{"prompt": user_text(i.messages[-1]), "reference": i.reference, "reply": r}
               for i, r in zip(items, replies)]
    outcomes: dict[str, list[bool]] = {}
    for item, reply, sample in zip(items, replies, samples):
        checks = task.checks + item.checks
        if checks:
            passed = {check_name(c): run_check(c, reply) for c in checks}
            sample["checks"] = passed
            for name, ok in passed.items():
                outcomes.setdefault(name, []).append(ok)
    if outcomes:
        per_sample = [all(s["checks"].values()) for s in samples if "checks" in s]
        metrics["check_pass_rate"] = sum(per_sample) / len(per_sample)  # every check of the sample passed
        metrics["check_accuracy"] = (sum(sum(v) for v in outcomes.values())
                                     / sum(len(v) for v in outcomes.values()))  # share of all checks passed
    result = {"metrics": metrics, "samples": samples,
              "checks": {name: sum(v) / len(v) for name, v in outcomes.items()}}
    if task.judge:
        with reporter.status(f"judging {task.name} with {task.judge.model} ({len(samples)} replies)"):
            judged = judge_replies(judge_settings(task.judge), [s["prompt"] for s in samples],
                                   [s["reference"] for s in samples], replies)
        metrics.update({k: judged[k] for k in ("judge_score", "judge_mean", "judge_unparsed")})
        for sample, score, raw in zip(samples, judged["scores"], judged["raw"]):
            sample["judge"] = {"score": score, "reply": raw}
    return result


def judge_settings(judge) -> JudgeSettings:
    """A suite task's `judge:` section as the judge module's settings."""
    return JudgeSettings(model=judge.model, base_url=judge.base_url, api_key_env=judge.api_key_env,
                         rubric=judge.rubric or DEFAULT_RUBRIC, max_score=judge.max_score,
                         concurrency=judge.concurrency)


def _classification(generator: Generator, suite: Suite, task: ClassificationTask, progress) -> dict:
    conversations, gold = load_classification(task)
    with progress(len(conversations)) as advance:
        replies = _generate_all(generator, conversations, _options(suite, task.max_new_tokens),
                                suite.generation.batch_size, advance)
    predicted = [parse_label(r, task.labels) for r in replies]
    scores = classification_scores(gold, predicted, task.labels)
    samples = [{"prompt": c[-1]["content"], "reference": g, "reply": r, "predicted": p}
               for c, g, r, p in zip(conversations, gold, replies, predicted)]
    return {"metrics": {k: scores[k] for k in ("accuracy", "macro_f1", "unparsed_rate")},
            "confusion_matrix": scores["confusion_matrix"], "matrix_columns": scores["matrix_columns"],
            "per_class": scores["per_class"], "samples": samples}


def _preference(loaded: LoadedModel, task: PreferenceTask, progress) -> dict:
    template = get_template(loaded.template_name, loaded.tokenizer)
    pairs = load_pairs(task)
    rows = [render(template, pair) for pair in pairs]
    reward = loaded.meta.get("task") == "reward"
    with progress(len(rows)) as advance:
        if reward:
            scored = reward_accuracy(loaded.model, loaded.tokenizer, rows, max_length=task.max_length,
                                     advance=advance)
        else:
            scored = preference_accuracy(loaded.model, loaded.tokenizer, rows, max_length=task.max_length,
                                         normalize=task.normalize, advance=advance)
    scorer = "reward score" if reward else "mean log-prob per token" if task.normalize else "summed log-prob"
    samples = [{"prompt": user_text(pair.prompt[-1]),
                "reference": f"chosen: {pair.chosen}\n\nrejected: {pair.rejected}",
                "reply": f"chosen {chosen:.4g} · rejected {rejected:.4g} {'✓' if chosen > rejected else '✗'}",
                "chosen_score": chosen, "rejected_score": rejected}
               for pair, (chosen, rejected) in zip(pairs, scored["scores"])]
    return {"scorer": scorer, "pairs": scored["pairs"],
            "metrics": {"accuracy": scored["accuracy"], "mean_margin": scored["mean_margin"]}, "samples": samples}
