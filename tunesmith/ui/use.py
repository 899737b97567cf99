"""The Use tab: chat with a run beside its base model, batch generation, the before/after evaluation, merge with its
evaluation, export. Each is the Python API's (`tunesmith.api`) or the library's own function; the models a chat
loads are kept for the next message (one run and its base at a time)."""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import ConfigError, TunesmithError

_loaded: dict[tuple, object] = {}
_lock = threading.Lock()  # one generation at a time: the models are shared by every browser tab


def check_run(run: str) -> Path:
    """A tunesmith run folder that finished (its tunesmith_run.json), or a ConfigError saying what it is instead."""
    from ..models.loading import read_run_meta

    path = Path((run or "").strip()).expanduser()
    if not str(run or "").strip():
        raise ConfigError("choose a run", where="run")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder", where="run")
    if read_run_meta(path) is None:
        raise ConfigError(f"{path} holds no finished run (no tunesmith_run.json)", where="run",
                          hint="wait for training to finish, or pick a run from the Train tab's list")
    return path


def _model(ref: str, template: str | None):
    """The model for `ref`, loaded once; loading another run frees the one before."""
    from .. import api
    from ..models.loading import RUN_META

    meta = Path(ref) / RUN_META
    # A run trained again into the same folder is a new model: its saved time is part of the key.
    key = (ref, template, meta.stat().st_mtime if meta.exists() else None)
    if key not in _loaded:
        if len(_loaded) >= 2:
            _loaded.clear()
        _loaded[key] = api.load(ref, template=template)
    return _loaded[key]


def run_and_base(run: str) -> tuple[str, str, str]:
    """(the run folder, its base model's reference, the run's template)."""
    from ..models.loading import read_run_meta

    path = check_run(run)
    meta = read_run_meta(path)
    return str(path), meta["base_model"]["name_or_path"], meta.get("template")


def sampling(max_new_tokens: int, temperature: float):
    from ..inference.generation import SamplingOptions

    return SamplingOptions(max_new_tokens=int(max_new_tokens), temperature=float(temperature)).check(
        {"max_new_tokens": "max new tokens", "temperature": "temperature"})


def chat(run: str, message: str, tuned_history: list[dict], base_history: list[dict], *,
         max_new_tokens: int = 128, temperature: float = 0.0) -> tuple[list[dict], list[dict]]:
    """One user message answered by the run and by its base model (rendered with the run's template, so both see
    the same prompt); returns both conversations as [{role, content}, ...]."""
    if not (message or "").strip():
        raise ConfigError("type a message", where="message")
    options = sampling(max_new_tokens, temperature)
    run_dir, base, template = run_and_base(run)
    histories = []
    with _lock:
        for ref, history in ((run_dir, tuned_history), (base, base_history)):
            conversation = [{"role": m["role"], "content": _text(m["content"])} for m in history or []]
            conversation.append({"role": "user", "content": message})
            generator = _model(ref, template if ref == base else None).generator()
            reply = generator.generate([conversation], options)[0]
            histories.append([*conversation, {"role": "assistant", "content": reply}])
    return histories[0], histories[1]


def _text(content) -> str:
    """A chat message's text (Gradio may hand back a list of parts)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def batch_generate(run: str, prompts: str, out: str, *, max_new_tokens: int = 128, temperature: float = 0.0,
                   batch_size: int = 8) -> tuple[str, list[list[str]]]:
    """`tunesmith generate RUN --prompts PROMPTS --out OUT`: (a message, the first rows [prompt, reply])."""
    import json

    from ..inference.batch import generate_file, load_prompts
    from ..io import check_writable

    options = sampling(max_new_tokens, temperature)
    run_dir = str(check_run(run))
    if not Path(prompts or "").is_file():
        raise ConfigError(f"prompts file {prompts!r} not found", where="prompts")
    check_writable(out, "output file")
    load_prompts(prompts)  # a bad prompts file fails before the model loads
    with _lock:
        count = generate_file(_model(run_dir, None).generator(), prompts, out, options, batch_size=int(batch_size))
    rows = []
    for line in Path(out).read_text(encoding="utf-8").splitlines()[:20]:
        record = json.loads(line)
        prompt = record.get("prompt") or record.get("instruction") or json.dumps(record.get("messages", ""))[:200]
        rows.append([str(prompt), str(record.get("response", record.get("output", "")))])
    return f"wrote {count} responses to {out}", rows


def evaluate(run: str, suite: str, compare_base: bool = True) -> str:
    """`tunesmith eval RUN SUITE [--compare base]`: the report's Markdown (before/after when compared)."""
    from .. import api

    run_dir = str(check_run(run))
    if not Path(suite or "").is_file():
        raise ConfigError(f"suite file {suite!r} not found", where="suite")
    with _lock:
        result = api.evaluate(run_dir, suite, compare="base" if compare_base else None)
    return f"report: {result.report_md}\n\n" + result.report_md.read_text(encoding="utf-8")


def merge(config: str, suite: str | None = None, out: str | None = None) -> str:
    """`tunesmith merge CONFIG [--eval SUITE]`: merge, then score the merged model against its sources."""
    from .. import api
    from ..io import atomic_write_json
    from ..merging import MergeConfig, load_config
    from ..merging.evaluate import evaluate_merge, load_suite, load_task_data, task_sources

    if not Path(config or "").is_file():
        raise ConfigError(f"merge config {config!r} not found", where="merge config")
    parsed = load_config(config)
    loaded_suite = None
    if (suite or "").strip():
        if not isinstance(parsed, MergeConfig):
            raise ConfigError("evaluation applies to model merges, not adapter operations", where=config)
        loaded_suite = load_suite(suite)  # suite, sources and data checked before the merge starts
        task_sources(loaded_suite, api.merge_sources(parsed), suite)
        load_task_data(loaded_suite)
    with _lock:
        folder = api.merge(parsed, out=(out or "").strip() or None)
        if loaded_suite is None:
            return f"merged → {folder}"
        report = evaluate_merge(str(folder), api.merge_sources(parsed), loaded_suite)
    atomic_write_json(Path(folder) / "merge_eval.json", report.to_dict())
    return f"merged → {folder}\n\n" + merge_report_markdown(report)


def merge_report_markdown(report) -> str:
    better = "lower is better" if report.metric == "loss" else "higher is better"
    lines = [f"### merge evaluation — {report.metric} ({better})", "",
             "| model | " + " | ".join(report.tasks) + " | average | worst |",
             "|---|" + "---:|" * (len(report.tasks) + 2)]
    for label, scores in report.scores.items():
        lines.append(f"| {label} | " + " | ".join(f"{scores[t]:.4f}" for t in report.tasks)
                     + f" | {report.average(label):.4f} | {report.worst(label):.4f} |")
    if report.retention:
        lines.append("| merged retention | " + " | ".join(f"{report.retention[t]:.0%}" if t in report.retention
                                                         else "-" for t in report.tasks)
                     + f" | | {report.worst_retention:.0%} |")
    lines += [""] + [f"- warning: {flag}" for flag in report.flags]
    if not report.flags:
        lines.append("no task fell below its source's min_retention")
    return "\n".join(lines)


def export(run: str, out: str, *, merge: bool = True, gguf: str = "") -> str:
    """`tunesmith export RUN --out OUT [--merge] [--gguf TYPE]`."""
    from .. import api
    from ..io import check_writable

    run_dir = str(check_run(run))
    if not (out or "").strip():
        raise ConfigError("name the output folder", where="out")
    check_writable(out, "out", folder=True)
    with _lock:
        if gguf:
            result = api.export_gguf(run_dir, out, gguf)
            return f"exported {result.gguf} and {result.modelfile} (ollama create NAME -f {result.modelfile})"
        folder = api.export(run_dir, out, merge=merge)
    return f"exported {folder} (loads with AutoModelForCausalLM.from_pretrained)"


def guarded(function, *args, **kwargs):
    """(the result, None) or (None, the error's message as the command line words it)."""
    try:
        return function(*args, **kwargs), None
    except TunesmithError as exc:
        return None, f"error: {exc}"
