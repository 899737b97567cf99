"""The Python API: what the `tunesmith` commands do, for notebooks and scripts (docs/python.md).

    import tunesmith
    cfg = tunesmith.load_config("examples/lora.yaml", {"training.max_steps": 50})
    result = tunesmith.train(cfg)                       # a TrainResult; the run folder is result.run_dir
    print(tunesmith.load(result.run_dir).generate("Tell me a story."))

The CLI is a thin layer over these functions: it parses arguments, calls them, and draws what they return. They
print nothing: progress goes to `reporter` (default: only the log; the CLI's
`tunesmith.cli.render.ConsoleReporter()` draws its lines and bars in a terminal or a notebook), and
bad input raises tunesmith's own errors (`tunesmith.errors`), which the CLI turns into messages and exit codes.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .errors import ConfigError
from .reporting import Reporter, reporter_or_default

if TYPE_CHECKING:
    from .config.loading import Overrides
    from .config.schema import RunConfig
    from .data.doctor.run import Report
    from .inference.export import GGUFExport
    from .models.loading import LoadedModel
    from .planning import MemoryPlan, PlanRequest
    from .training.run import TrainResult

ConfigSource = Union[str, Path, Mapping[str, Any], "RunConfig"]


def load_config(config: ConfigSource, overrides: Overrides = None) -> RunConfig:
    """A validated run config from a YAML file, a dict shaped like one, or a RunConfig, with `overrides` applied:
    ["training.max_steps=50"] as on the command line, or {"training.max_steps": 50}. Raises ConfigError."""
    from .config.loading import config_from_dict
    from .config.loading import load_config as load_file
    from .config.schema import RunConfig

    if isinstance(config, RunConfig):
        return config_from_dict(config.model_dump(mode="json"), overrides) if overrides else config
    if isinstance(config, Mapping):
        return config_from_dict(config, overrides)
    if isinstance(config, (str, Path)):
        return load_file(config, overrides, overridden_on="overrides")
    raise ConfigError(f"a config is a YAML path, a dict or a RunConfig, got {type(config).__name__}")


def prepare_output(cfg: RunConfig, source: str = "config") -> Path:
    """Fail before any loading when the run folder cannot be written; clear what a killed run's save left there."""
    from .io import check_writable, clean_stale_staging

    out = check_writable(cfg.training.output_dir, f"{source}: training.output_dir", folder=True)
    clean_stale_staging(out)
    return out


def train(config: ConfigSource, overrides: Overrides = None, *, resume: bool = False,
          reporter: Reporter | None = None, callbacks: list | None = None) -> TrainResult:
    """Train as the config says (`tunesmith train`); the result is saved in `training.output_dir`. `resume`:
    continue from the latest complete checkpoint. `callbacks`: extra transformers TrainerCallbacks."""
    cfg = load_config(config, overrides)
    prepare_output(cfg)
    from .recipes import train as run_recipe

    return run_recipe(cfg, resume=resume, reporter=reporter, extra_callbacks=callbacks)


def train_processes(cfg: RunConfig, config: str, overrides: list[str], *, nproc: int, resume: bool = False,
                    show_log: bool = False) -> None:
    """`tunesmith train CONFIG --nproc N`: the run of `cfg` (loaded from `config` with `overrides`) in `nproc`
    processes on this machine, each running `tunesmith train CONFIG OVERRIDES`; rank 0 prints and writes the run
    folder. Raises `DistributedRunFailed` when a process fails (docs/distributed.md)."""
    import os

    import torch

    from .training.distributed import check_nproc
    from .training.launch import launch_local, worker_command

    if "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc starts the processes itself, but this command already runs under a launcher "
                          f"(WORLD_SIZE={os.environ['WORLD_SIZE']})", where="--nproc",
                          hint="drop --nproc: torchrun / accelerate launch already started the processes")
    cuda = torch.cuda.is_available()
    check_nproc(cfg, nproc, cuda=cuda)
    launch_local(worker_command(config, overrides, resume=resume, show_log=show_log), nproc, cuda=cuda)


@dataclass
class Model:
    """A run folder (or any model) loaded for generation and evaluation, with its training template."""

    loaded: LoadedModel
    ref: str

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def generator(self):
        from .inference.generation import Generator

        return Generator(self.loaded)

    def generate(self, prompts: str | list, *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0, seed: int | None = None,
                 batch_size: int = 8) -> str | list[str]:
        """Replies to a prompt (a str gives a str) or a list of prompts / conversations ([{role, content}, ...]),
        rendered with the run's template; temperature 0 is greedy. As `tunesmith generate` answers them."""
        from .inference.generation import SamplingOptions

        options = SamplingOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                  repetition_penalty=repetition_penalty, seed=seed).check()
        single = isinstance(prompts, str)
        conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p)
                         for p in ([prompts] if single else prompts)]
        generator = self.generator()
        replies = [reply for start in range(0, len(conversations), batch_size)
                   for reply in generator.generate(conversations[start:start + batch_size], options)]
        return replies[0] if single else replies

    def evaluate(self, suite: str | Path, *, label: str | None = None, reporter: Reporter | None = None) -> dict:
        """This model's metrics on each task of an evaluation suite (docs/evaluation.md); writes no report."""
        from .evaluation.data import check_task_data
        from .evaluation.runner import evaluate_suite
        from .evaluation.suite import load_suite

        loaded_suite = load_suite(suite)
        check_task_data(loaded_suite)
        return evaluate_suite(self.loaded, loaded_suite, label=label or _label(self.ref, None), reporter=reporter)


def load(run_or_model: str | Path, *, dtype: str = "auto", template: str | None = None,
         trust_remote_code: bool = False) -> Model:
    """A run folder (adapter or full model, with its template), an HF folder, a GGUF file or a hub id, ready to
    generate (`tunesmith chat` / `generate`) and evaluate. A reward run loads its scoring head."""
    from .evaluation.runner import load_evaluated

    ref = str(run_or_model)
    return Model(load_evaluated(ref, dtype=dtype, template=template, trust_remote_code=trust_remote_code), ref)


@dataclass
class Evaluation:
    """`evaluate`'s result: the model's metrics, the base model's and the comparison when compared, the report."""

    tuned: dict
    base: dict | None
    comparison: dict | None
    out: Path
    report_md: Path
    report_html: Path


def evaluate(run_or_model: str | Path, suite: str | Path, *, compare: str | None = None,
             out: str | Path | None = None, dtype: str = "auto", template: str | None = None,
             trust_remote_code: bool = False, reporter: Reporter | None = None) -> Evaluation:
    """`tunesmith eval`: run a suite's tasks, write results.json, report.md and report.html into `out` (default
    RUN/eval/SUITE_NAME, or eval/SUITE_NAME). `compare`: a second model for a before/after report ("base": the
    run's own base model), which answers the same prompts rendered with the run's template."""
    from .evaluation.compare import compare_results, head_to_head
    from .evaluation.data import check_task_data
    from .evaluation.report import write_report
    from .evaluation.runner import check_suite_for, evaluate_suite, load_evaluated
    from .evaluation.suite import load_suite
    from .io import atomic_write_json
    from .models.loading import read_run_meta

    reporter = reporter_or_default(reporter)
    ref = str(run_or_model)
    loaded_suite = load_suite(suite)  # the suite and all its data are validated before any model loads
    check_task_data(loaded_suite)
    meta = read_run_meta(ref) if Path(ref).is_dir() else None
    check_suite_for(meta, loaded_suite)
    if compare == "base":
        if meta is None:
            raise ConfigError("--compare base needs a tunesmith run folder (it names its base model)",
                              where="--compare", hint="pass the base model's path instead")
        compare = meta["base_model"]["name_or_path"]
    folder = Path(out) if out else (Path(ref) / "eval" if meta else Path("eval")) / loaded_suite.name

    def run_on(model_ref: str, label: str, model_template: str | None):
        with reporter.status(f"loading {model_ref}"):
            loaded = load_evaluated(model_ref, dtype=dtype, template=model_template,
                                    trust_remote_code=trust_remote_code)
        return evaluate_suite(loaded, loaded_suite, label=label, reporter=reporter), loaded.template_name

    tuned, run_template = run_on(ref, _label(ref, "tuned" if compare else None), template)
    folder.mkdir(parents=True, exist_ok=True)
    base = comparison = None
    if not compare:
        atomic_write_json(folder / "results.json", tuned)
        md, page = write_report([tuned], folder)
    else:
        gc.collect()
        base, _ = run_on(compare, _label(compare, "base"), run_template)
        comparison = compare_results(base, tuned)
        comparison["head_to_head"] = head_to_head(loaded_suite, base, tuned, reporter)
        atomic_write_json(folder / "results.json", {"base": base, "tuned": tuned, "comparison": comparison})
        md, page = write_report([base, tuned], folder, comparison)
    return Evaluation(tuned, base, comparison, folder, Path(md), Path(page))


def _label(ref: str, role: str | None) -> str:
    name = Path(ref.rstrip("/")).name or ref
    return f"{role}: {name}" if role else name


@dataclass
class SetEvaluation:
    """`evaluate_set`'s result: per adapter its metrics (`tuned`), the base's on the same suite and their comparison
    when compared, and the summary report over all of them."""

    tuned: dict[str, dict]
    base: dict[str, dict] | None
    comparison: dict[str, dict] | None
    out: Path
    report_md: Path


def evaluate_set(manifest: str | Path, *, suite: str | Path | None = None, compare_base: bool = False,
                 out: str | Path | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                 reporter: Reporter | None = None) -> SetEvaluation:
    """`tunesmith eval SET.yaml`: every adapter of an adapter set on its own suite (the manifest's
    `adapters.NAME.suite`; `suite` for those without one), the base loaded once. `compare_base`: each suite also
    through the base alone (PEFT's `disable_adapter()`), a before/after per adapter. Writes `out` (default
    eval/SET_NAME): a folder per adapter with its full report, and report.md + results.json summing them up. A
    judged generation task, compared, is also judged head to head against the base (as `evaluate` does)."""
    from .evaluation.compare import compare_results, head_to_head
    from .evaluation.data import check_task_data
    from .evaluation.report import write_report
    from .evaluation.runner import evaluate_suite, headline_metric
    from .evaluation.suite import load_suite
    from .inference.adapter_set import load_adapter_set, read_manifest
    from .io import atomic_write_json, atomic_write_text
    from .models.loading import LoadedModel

    reporter = reporter_or_default(reporter)
    read = read_manifest(manifest)
    suites = {}
    for name, entry in read.adapters.items():  # every suite and its data checked before the model loads
        path = entry.suite or suite
        if path is None:
            raise ConfigError(f"adapter '{name}' has no evaluation suite", where=read.where("adapters", name, "suite"),
                              hint="give it `suite: FILE.yaml` in the manifest, or pass --suite for every adapter "
                                   "without one")
        suites[name] = load_suite(path)
        check_task_data(suites[name])
    with reporter.status(f"loading {manifest}"):
        adapter_set = load_adapter_set(read, dtype=dtype, trust_remote_code=trust_remote_code)
    folder = Path(out) if out else Path("eval") / Path(manifest).stem
    tuned: dict[str, dict] = {}
    base: dict[str, dict] = {}
    comparison: dict[str, dict] = {}
    for name, adapter_suite in suites.items():
        # The adapter's own template renders its suite's prompts, for the base too: the same prompts, before/after.
        loaded = LoadedModel(adapter_set.model, adapter_set.tokenizer, adapter_set.template_name(name), {})
        with adapter_set.using([name]):
            tuned[name] = evaluate_suite(loaded, adapter_suite, label=name, reporter=reporter)
        if compare_base:
            with adapter_set.using([adapter_set.base_name]):
                base[name] = evaluate_suite(loaded, adapter_suite, label=f"{adapter_set.base_name} ({name}'s suite)",
                                            reporter=reporter)
            comparison[name] = compare_results(base[name], tuned[name])
            comparison[name]["head_to_head"] = head_to_head(adapter_suite, base[name], tuned[name], reporter)
            write_report([base[name], tuned[name]], folder / name, comparison[name])
        else:
            write_report([tuned[name]], folder / name)
    rows = []
    for name, result in tuned.items():
        for task, task_result in result["tasks"].items():
            metric = headline_metric(task_result)
            if metric is None:
                continue
            value = task_result["metrics"][metric]
            before = base[name]["tasks"][task]["metrics"].get(metric) if compare_base else None
            rows.append({"adapter": name, "suite": suites[name].name, "task": task, "metric": metric,
                         "value": value, "base": before})
    atomic_write_json(folder / "results.json", {"tuned": tuned, "base": base or None,
                                                "comparison": comparison or None, "summary": rows})
    head = "| adapter | suite | task | metric | adapter's value |" + (" base alone |" if compare_base else "")
    lines = [f"# Evaluation: adapter set {Path(manifest).name}", "",
             "Each adapter on its own suite (headline metric per task); full reports in the folder of each "
             "adapter.", "", head, "|" + " --- |" * (6 if compare_base else 5)]
    for row in rows:
        cells = [row["adapter"], row["suite"], row["task"], row["metric"], f"{row['value']:.4g}"]
        if compare_base:
            cells.append("" if row["base"] is None else f"{row['base']:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")
    return SetEvaluation(tuned, base or None, comparison or None, folder, folder / "report.md")


def _router_classifier(spec, *, dtype: str, trust_remote_code: bool):
    """The router's classifier run, loaded once, as texts → [{"label", "score"}]. Calls are serialised: the server
    routes on its HTTP threads, and a fast tokenizer is not safe to share between threads."""
    import threading

    from .tasks.classification.inference import load_classifier

    classifier = load_classifier(spec.classifier, dtype=dtype, trust_remote_code=trust_remote_code)
    lock = threading.Lock()

    def classify(texts: list[str]) -> list[dict]:
        with lock:
            return [{"label": r["label"], "score": r["score"]} for r in classifier.predict(texts)]

    return classify


def load_router(adapter_set: Any, *, dtype: str = "auto", trust_remote_code: bool = False):
    """The router of an adapter set's manifest (docs/multitask.md, Routing), its classifier loaded (once): for an
    AdapterSet it is attached (`adapter_set.router`, used by `model: auto`); for a manifest (a path or a read
    Manifest) it is returned alone, no language model loaded. None when the manifest has no `router:`."""
    from .inference.adapter_set import AdapterSet, read_manifest
    from .inference.router import Router

    manifest = adapter_set.manifest if isinstance(adapter_set, AdapterSet) else (
        adapter_set if not isinstance(adapter_set, (str, Path)) else read_manifest(adapter_set))
    if manifest.router is None:
        return None
    classify = (_router_classifier(manifest.router, dtype=dtype, trust_remote_code=trust_remote_code)
                if manifest.router.classifier is not None else None)
    if isinstance(adapter_set, AdapterSet):
        return adapter_set.attach_router(classify)
    return Router(manifest.router, [manifest.base_name, *manifest.adapters], classify)


@dataclass
class RouterEvaluation:
    result: dict  # accuracy, confusion_matrix (rows: labelled adapter, columns: routed), labels, misrouted, by
    folder: Path
    report_md: Path


def evaluate_router(manifest: str | Path, data: str | Path | None = None, *, out: str | Path | None = None,
                    dtype: str = "auto", trust_remote_code: bool = False) -> RouterEvaluation:
    """`tunesmith eval SET.yaml --router-data LABELLED.jsonl`: the router's accuracy on labelled prompts (`data`,
    default the manifest's `router.eval_data`). Only the router loads (its classifier, if any), not the language
    model. Writes `out` (default eval/SET_NAME/router): report.md (accuracy, confusion table, misrouted prompts)
    and results.json."""
    from .inference.adapter_set import read_manifest
    from .inference.router import evaluate_router as score_router
    from .inference.router import read_labelled, router_report_md
    from .io import atomic_write_json, atomic_write_text

    read = read_manifest(manifest)
    if read.router is None:
        raise ConfigError("the set has no router to evaluate", where=read.where("router"),
                          hint="add a `router:` section (docs/multitask.md, Routing)")
    data = data or read.router.eval_data
    if data is None:
        raise ConfigError("name the labelled prompts", where="--router-data",
                          hint="--router-data LABELLED.jsonl, or `eval_data:` in the manifest's router section")
    names = [read.base_name, *read.adapters]
    read_labelled(data, names)  # a bad label fails before the classifier loads
    router = load_router(read, dtype=dtype, trust_remote_code=trust_remote_code)
    result = score_router(router, data, names)
    folder = Path(out) if out else Path("eval") / Path(manifest).stem / "router"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "results.json", result)
    atomic_write_text(folder / "report.md", router_report_md(result))
    return RouterEvaluation(result, folder, folder / "report.md")


def merge(config: str | Path | Mapping[str, Any] | Any, *, out: str | Path | None = None, overwrite: bool = False,
          reporter: Reporter | None = None) -> Path:
    """`tunesmith merge`: a merge config (YAML path, dict, or parsed; docs/merging.md) written to `out` (default:
    its `output:`) as a standalone model or adapter. Returns the output folder."""
    from .merging import load_config as load_merge_config
    from .merging import parse_config
    from .merging import run as run_merge

    if isinstance(config, (str, Path)):
        config = load_merge_config(config)
    elif isinstance(config, Mapping):
        config = parse_config(dict(config))
    return run_merge(config, out, overwrite=overwrite, reporter=reporter)


def merge_sources(config: Any) -> dict[str, str]:
    """label → folder of every model a merge config (parsed) combines, its base first: what `--eval` scores the
    merged model against."""
    from .merging.config import source_labels
    from .models.reference import resolve_ref

    folders = [*([config.base_model] if config.base_model else []), *(m.model for m in config.models)]
    labels = source_labels(["base", *folders[1:]] if config.base_model else folders)
    return {label: resolve_ref(folder) for label, folder in zip(labels, folders)}


def diagnose_merge(config: str | Path | Mapping[str, Any] | Any, *, base: str | None = None,
                   density: float | None = None):
    """`tunesmith merge CONFIG --diagnose`: the task vectors the config names compared (sign conflict, cosines,
    norm ratios, whole and per layer) and a recommended method or `keep_apart` (tunesmith.merging.diagnose).
    `base`: the base of full models when the config has none; `density`: the trim before counting conflicts."""
    from .merging import load_config as load_merge_config
    from .merging import parse_config
    from .merging.diagnose import diagnose

    if isinstance(config, (str, Path)):
        config = load_merge_config(config)
    elif isinstance(config, Mapping):
        config = parse_config(dict(config))
    return diagnose(config, base=base, density=density)


def export(run: str | Path, out: str | Path, *, merge: bool = True, dtype: str = "float32",
           trust_remote_code: bool = False) -> Path:
    """`tunesmith export`: the run as a standalone Hugging Face model in `out` (the adapter merged into the base
    weights; `merge=False` copies the adapter as it is). Returns the output folder."""
    from .inference.export import export_run

    return export_run(str(run), str(out), merge=merge, dtype=dtype, trust_remote_code=trust_remote_code)


def export_gguf(run: str | Path, out: str | Path, kind: str = "f16", *, trust_remote_code: bool = False,
                reporter: Reporter | None = None) -> GGUFExport:
    """`tunesmith export --gguf KIND`: the run merged and written as one GGUF file (f16, q8_0, q4_k_m, ...; the
    tokenizer and the run's chat template inside) plus an Ollama Modelfile, in `out` (docs/export.md)."""
    from .inference.export import export_gguf as run_export_gguf

    return run_export_gguf(run, out, kind, trust_remote_code=trust_remote_code, reporter=reporter)


def plan(config: ConfigSource | None = None, overrides: Overrides = None, *, model: str | None = None,
         device: str | None = None, reporter: Reporter | None = None, **request: Any) -> MemoryPlan:
    """`tunesmith plan`: parameter counts and the predicted peak memory of a training run, from the model's
    config alone (no weights). Either a run config (as `train` takes it), or `model=` a model reference with
    PlanRequest fields (method, method_options, batch, seq, grad_accum, gradient_checkpointing, ...). `device`:
    cpu or cuda (default: this machine's). `plan.peak` is in bytes."""
    import torch

    from .planning import PlanRequest

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    trust = False
    if config is not None:
        from .planning.preflight import request_from_config

        cfg = load_config(config, overrides)
        plan_request = request_from_config(cfg, device)
        model, trust = model or cfg.model.name_or_path, cfg.model.trust_remote_code
    elif model is None:
        raise ConfigError("give a run config or a model to plan for", where="model")
    else:
        plan_request = PlanRequest(device=device)
    unknown = [name for name in request if not hasattr(plan_request, name)]
    if unknown:
        raise ConfigError(f"PlanRequest has no field {unknown[0]!r}", where=unknown[0])
    for name, value in request.items():
        setattr(plan_request, name, value)
    return plan_model(model, plan_request, trust_remote_code=trust, reporter=reporter)[0]


def plan_model(model: str, request: PlanRequest, *, trust_remote_code: bool = False,
               reporter: Reporter | None = None):
    """The plan of `request` on `model` and the model's config (what `plan` builds on). Warns through `reporter`
    when the sequence is longer than the model's context."""
    from .planning import load_model_config, plan_memory

    reporter = reporter_or_default(reporter)
    with reporter.status(f"reading the config of {model}"):
        model_config = load_model_config(model, trust_remote_code=trust_remote_code)
    context = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if isinstance(context, int) and request.seq > context:
        reporter.warning(f"sequence length {request.seq:,} is longer than {model}'s context of {context:,} "
                         f"positions: training could not run at this length (--seq / data.max_length)")
    with reporter.status(f"building {request.method} on meta weights and tracing activations"):
        return plan_memory(model_config, request), model_config


CHECK_STAGES = ("schema", "statistics", "diversity", "accuracy", "consistency", "duplicates", "preference")


def check_data(path: str | Path, *, against: list[str] | tuple[str, ...] = (), tokenizer: str | None = None,
               template: str | None = None, max_len: int | None = None, reporter: Reporter | None = None,
               **options: Any) -> Report:
    """`tunesmith data check`, the data doctor: schema, lengths, diversity, accuracy, consistency, duplicates,
    preference pairs, and overlap with `against` (eval files). `options`: further CheckOptions fields
    (format, near_duplicate_threshold, max_task_share, ...). `report.summary` holds the headline numbers,
    `report.findings` what was found."""
    from dataclasses import fields

    from .data.doctor.run import CheckOptions, run_check

    known = {f.name for f in fields(CheckOptions)}
    if unknown := [name for name in options if name not in known]:
        raise ConfigError(f"the data check has no option {unknown[0]!r}", where=unknown[0],
                          hint=f"its options: {', '.join(sorted(known))}")
    check_options = CheckOptions(tokenizer=tokenizer, template=template, max_len=max_len, against=list(against),
                                 **options)
    stages = [*CHECK_STAGES, *(["contamination"] if against else [])]
    with reporter_or_default(reporter).progress("checking", len(stages)) as advance:
        report = run_check(str(path), check_options, progress=lambda name: advance(1, detail=name))
    return report
