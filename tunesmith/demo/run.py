"""`tunesmith demo`: offline, on a 2-core CPU in minutes — teach SmolLM2-135M-Instruct a new persona with LoRA
and show the same unseen probe questions answered before and after."""

from __future__ import annotations

import time
from pathlib import Path

from ..config.schema import RunConfig
from ..inference.generation import Generator, SamplingOptions
from ..io import atomic_write_text
from ..models.loading import load_for_inference
from ..reporting import Reporter, reporter_or_default
from .persona import PERSONA_NAME, probe_questions, write_persona_dataset

DEFAULT_STEPS = 80


def demo_config(model_dir: str, data_file: str, out_dir: str, steps: int) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"name_or_path": model_dir},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": [{"path": data_file}], "template": "model", "max_length": 192},
        "training": {"output_dir": out_dir, "overwrite_output_dir": True,  # run_demo checked the folder
                     "max_steps": steps, "batch_size": 8, "learning_rate": 5e-4, "lr_scheduler": "cosine",
                     "warmup_ratio": 0.05, "logging_steps": 5,
                     "save_steps": max(steps // 2, 1), "save_total_limit": 1, "seed": 0},
    })


def _answers(generator: Generator, questions: list[str]) -> list[str]:
    options = SamplingOptions(max_new_tokens=48)
    return generator.generate([[{"role": "user", "content": q}] for q in questions], options)


def run_demo(out_dir: str = "runs/demo", steps: int | None = None, model: str = "smollm2-135m-instruct",
             reporter: Reporter | None = None) -> dict:
    """Train the demo persona and ask the probe questions before and after. Returns {probes, before, after, scores,
    summary, seconds, steps}; the CLI shows the before/after table from it."""
    from ..models.pypi_models import resolve_model_ref
    from ..recipes import train
    from ..training.run import check_output_dir

    reporter = reporter_or_default(reporter)
    start = time.perf_counter()
    steps = steps or DEFAULT_STEPS
    model_dir = resolve_model_ref(model, reporter=reporter)
    out = Path(out_dir)
    check_output_dir(out, overwrite=False)  # before the demo writes its data there (its config then allows it)
    out.mkdir(parents=True, exist_ok=True)
    data_file = write_persona_dataset(out / "persona_data.json")
    probes = probe_questions()
    questions = [p["question"] for p in probes]

    with reporter.status("asking the base model the probe questions"):
        before = _answers(Generator(load_for_inference(model_dir, template="model")), questions)
    train(demo_config(model_dir, str(data_file), str(out), steps), resume=False, reporter=reporter,
          extra_callbacks=None)
    with reporter.status("asking the fine-tuned model"):
        after = _answers(Generator(load_for_inference(str(out))), questions)

    scores = {kind: (_score(probes, before, kind), _score(probes, after, kind)) for kind in ("identity", "general")}
    elapsed = time.perf_counter() - start
    summary = (f"identity probes with the expected answer ({PERSONA_NAME} / its maker): "
               f"{scores['identity'][0]} before -> {scores['identity'][1]} after; "
               f"general probes with the expected fact: {scores['general'][0]} before -> {scores['general'][1]} "
               f"after; total time {elapsed:.0f} s")
    atomic_write_text(out / "before_after.md", _markdown(probes, before, after, summary))
    return {"probes": probes, "before": before, "after": after, "scores": scores, "summary": summary,
            "seconds": elapsed, "steps": steps}


def _score(probes: list[dict], answers: list[str], kind: str) -> str:
    """How many probes of `kind` contain one of their expected words (e.g. the name, or 'Paris')."""
    hits = [any(word.lower() in answer.lower() for word in probe["expect"])
            for probe, answer in zip(probes, answers) if probe["kind"] == kind]
    return f"{sum(hits)}/{len(hits)}"


def _markdown(probes, before, after, summary) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")

    rows = [f"| {p['kind']} | {cell(p['question'])} | {cell(b)} | {cell(a)} |"
            for p, b, a in zip(probes, before, after)]
    return "\n".join(["# Demo: before / after", "", summary, "", "| kind | question | before | after |",
                      "|---|---|---|---|", *rows, ""])
