"""The Build tab: a form that writes a run config's YAML, validated as `tunesmith train` validates it.

The YAML is the source of truth: the form sets the keys it owns and keeps every other key the YAML holds (an `eval:`
section typed by hand survives a change of the learning rate). Validation goes through the same function as the
command line (`config.loading.config_from_text`), for the file the config will be saved as, so a message here is the
message `tunesmith train FILE` prints.
"""

from __future__ import annotations

import copy
import html
from pathlib import Path
from typing import Any

import yaml

from ..config.loading import config_from_text, parse_yaml
from ..errors import ConfigError, TunesmithError

# The form's fields, in the order the page passes them, with their start values.
FORM_DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    "model_path": "",  # a local folder or hub id; when given it replaces `model`
    "method": "lora",
    "r": 16,
    "alpha": 32,
    "dropout": 0.05,
    "target_modules": "all-linear",
    "method_extra": "",  # further method options as a YAML mapping
    "data_files": "",  # one path a line
    "max_samples": 0,  # 0: every record
    "template": "auto",
    "max_length": 1024,
    "val_size": 0.0,
    "output_dir": "runs/ui",
    "max_steps": 0,  # 0: train num_epochs
    "num_epochs": 3.0,
    "learning_rate": 0.0,  # 0: derived from the method and model (task sft)
    "batch_size": 4,
    "grad_accum": 1,
    "lr_scheduler": "cosine",
    "logging_steps": 10,
    "save_steps": 100,
    "gradient_checkpointing": False,
    "cpu_kernels": "auto",
}
FORM_FIELDS = list(FORM_DEFAULTS)
LORA_OPTIONS = ("r", "alpha", "dropout", "target_modules")
PATH_PREFIXES = ("/", "./", "../", "~")
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")


def model_choices() -> list[str]:
    """The models that need no hub: those tunesmith fetches from PyPI (`tunesmith.models.pypi_models`)."""
    from ..models.pypi_models import list_pypi_models

    return [entry.name for entry in list_pypi_models()]


def method_choices() -> list[str]:
    from ..methods.registry import all_methods

    return sorted(all_methods())


def template_choices() -> list[str]:
    from ..data.templates.registry import available_templates

    return ["auto", *available_templates()]


def _method_fields(name: str) -> set[str]:
    from ..methods.registry import all_methods

    method = all_methods().get(name)
    return set(method.Options.model_fields) if method is not None else set()


def _number(value, kind=float):
    """A form number, or None when left empty or at 0 (the field is then left out of the YAML)."""
    if value in (None, ""):
        return None
    value = kind(value)
    return value or None


def form_to_config(form: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config mapping of the form's values over `base` (the current YAML's mapping; keys the form does not own
    are kept). Raises ConfigError when the extra method options are not a YAML mapping."""
    form = {**FORM_DEFAULTS, **form}
    raw = copy.deepcopy(base) if isinstance(base, dict) else {}
    model = raw["model"] if isinstance(raw.get("model"), dict) else {}
    raw["model"] = model
    model["name_or_path"] = (form["model_path"] or "").strip() or form["model"]

    old_method = raw.get("method") if isinstance(raw.get("method"), dict) else {}
    method = dict(old_method) if old_method.get("name") == form["method"] else {}
    method["name"] = form["method"]
    fields = _method_fields(form["method"])
    for key in LORA_OPTIONS:
        if key in fields and form[key] not in (None, ""):
            method[key] = int(form[key]) if key == "r" else form[key] if key == "target_modules" else float(form[key])
    if (form["method_extra"] or "").strip():
        extra = parse_yaml(form["method_extra"], "method options")
        if not isinstance(extra, dict):
            raise ConfigError("the further method options are not a YAML mapping", where="method options",
                              hint="one `key: value` a line, e.g. `use_rslora: true`")
        method.update(extra)
    raw["method"] = {"name": method.pop("name"), **method}

    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    old_specs = {spec.get("path"): spec for spec in data.get("train", []) if isinstance(spec, dict)}
    specs = []
    for path in (line.strip() for line in (form["data_files"] or "").splitlines()):
        if path:
            spec = {**old_specs.get(path, {}), "path": path}
            spec.pop("max_samples", None)
            if samples := _number(form["max_samples"], int):
                spec["max_samples"] = samples
            specs.append(spec)
    data["train"] = specs
    data["template"] = form["template"]
    data["max_length"] = int(form["max_length"])
    _set_or_drop(data, "val_size", _number(form["val_size"]))
    raw["data"] = {"train": data.pop("train"), **data}

    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    training["output_dir"] = form["output_dir"]
    _set_or_drop(training, "max_steps", _number(form["max_steps"], int))
    training["num_epochs"] = float(form["num_epochs"])
    _set_or_drop(training, "learning_rate", _number(form["learning_rate"]))
    for key in ("batch_size", "grad_accum", "logging_steps", "save_steps"):
        training[key] = int(form[key])
    training["lr_scheduler"] = form["lr_scheduler"]
    _set_or_drop(training, "gradient_checkpointing", True if form["gradient_checkpointing"] else None)
    raw["training"] = training

    speed = raw.get("speed") if isinstance(raw.get("speed"), dict) else {}
    _set_or_drop(speed, "cpu_kernels", "off" if form["cpu_kernels"] == "off" else None)
    if speed:
        raw["speed"] = speed
    else:
        raw.pop("speed", None)
    order = ["task", "model", "method", "data", "training", "speed"]
    return {key: raw[key] for key in sorted(raw, key=lambda k: order.index(k) if k in order else len(order))}


def _set_or_drop(section: dict, key: str, value) -> None:
    if value is None:
        section.pop(key, None)
    else:
        section[key] = value


def config_to_form(raw: dict[str, Any]) -> dict[str, Any]:
    """The form's values for a config mapping (what Load fills in); fields it does not set keep their defaults."""
    form = dict(FORM_DEFAULTS)
    model = raw.get("model") or {}
    ref = str(model.get("name_or_path", "")) if isinstance(model, dict) else ""
    if ref in model_choices():
        form["model"], form["model_path"] = ref, ""
    else:
        form["model_path"] = ref
    method = raw.get("method") or {}
    method = {"name": method} if isinstance(method, str) else method
    form["method"] = method.get("name", "lora")
    for key in LORA_OPTIONS:
        if key in method:
            form[key] = method[key]
    extra = {k: v for k, v in method.items() if k not in ("name", *LORA_OPTIONS)}
    form["method_extra"] = yaml.safe_dump(extra, sort_keys=False).strip() if extra else ""
    data = raw.get("data") or {}
    specs = [spec for spec in data.get("train", []) if isinstance(spec, dict)]
    form["data_files"] = "\n".join(str(spec.get("path", "")) for spec in specs)
    form["max_samples"] = next((spec["max_samples"] for spec in specs if spec.get("max_samples")), 0)
    for key in ("template", "max_length", "val_size"):
        if key in data:
            form[key] = data[key]
    training = raw.get("training") or {}
    for key in ("output_dir", "max_steps", "num_epochs", "learning_rate", "batch_size", "grad_accum",
                "lr_scheduler", "logging_steps", "save_steps", "gradient_checkpointing"):
        if training.get(key) is not None:
            form[key] = training[key]
    form["cpu_kernels"] = (raw.get("speed") or {}).get("cpu_kernels", "auto")
    return form


def to_yaml(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def yaml_mapping(text: str, path: str) -> dict[str, Any] | None:
    """The YAML's mapping, or None when it does not parse to one (the form then starts from nothing)."""
    try:
        raw = parse_yaml(text, path)
    except ConfigError:
        return None
    return raw if isinstance(raw, dict) else None


def form_yaml(form: dict[str, Any], current_yaml: str, path: str) -> str:
    """Build's form change: the YAML with the form's values written over it."""
    return to_yaml(form_to_config(form, yaml_mapping(current_yaml, path)))


def validate(text: str, path: str):
    """(the RunConfig or None, the message). The message of an invalid config is the command line's
    (`error: ...`, as `tunesmith train PATH` prints it); a valid one also has its typed paths checked."""
    try:
        cfg = config_from_text(text, path)
    except TunesmithError as exc:
        return None, f"error: {exc}"
    try:
        check_paths(cfg)
    except TunesmithError as exc:
        exc.where = f"{path}: {exc.where}"
        return None, f"error: {exc}"
    return cfg, "valid: `tunesmith train " + path + "` accepts this config"


def looks_like_path(value: str) -> bool:
    return value.startswith(PATH_PREFIXES) or Path(value).suffix.lower() in DATA_SUFFIXES or Path(value).exists()


def check_paths(cfg) -> None:
    """The paths a user typed exist and are what they should be: the model a folder or a (GGUF) file, each data
    file a file, the output folder not a file. A hub id (not path-like) is left to the loader."""
    model = cfg.model.name_or_path
    if looks_like_path(model) and not Path(model).expanduser().exists():
        raise ConfigError(f"model path {model} does not exist", where="model.name_or_path",
                          hint="a local model folder, a .gguf file, a hub id, or one of the offline models")
    for index, spec in enumerate([*cfg.data.train, *cfg.data.validation]):
        path = Path(spec.path).expanduser()
        if looks_like_path(spec.path) and not path.is_file():
            what = "is a folder, not a data file" if path.is_dir() else "does not exist"
            raise ConfigError(f"data file {spec.path} {what}", where=f"data.train.{index}.path")
    out = Path(cfg.training.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, but a run needs a folder", where="training.output_dir")


def save(text: str, path: str) -> str:
    """Save the YAML (only a valid one) to `path`; the message says what happened."""
    cfg, message = validate(text, path)
    if cfg is None:
        return message
    from ..io import atomic_write_text, check_writable

    try:
        check_writable(path, "config file")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(path), text)
    except TunesmithError as exc:
        return f"error: {exc}"
    return f"saved {path}"


def load(path: str) -> tuple[str, dict[str, Any], str]:
    """(the YAML text, the form's values, a message) of a saved config file."""
    from ..config.loading import read_config_text

    try:
        text = read_config_text(path)
    except TunesmithError as exc:
        return "", dict(FORM_DEFAULTS), f"error: {exc}"
    return text, config_to_form(yaml_mapping(text, path) or {}), f"loaded {path}"


def preview_html(text: str, path: str, num: int = 2) -> str:
    """The first samples of the first training file as training encodes them (`tunesmith data preview`), trained
    tokens highlighted; or the error, as HTML."""
    from ..data.preview import preview_samples
    from ..data.templates.registry import get_template
    from ..models.loading import load_tokenizer

    cfg, message = validate(text, path)
    if cfg is None:
        return f"<pre>{html.escape(message)}</pre>"
    try:
        tokenizer = load_tokenizer(cfg.model)
        blocks = preview_samples(cfg.data, tokenizer, get_template(cfg.data.template, tokenizer), n=num)
    except TunesmithError as exc:
        return f"<pre>{html.escape(f'error: {exc}')}</pre>"
    parts = ['<p class="legend"><mark>highlighted</mark> = trained tokens (the model learns to produce them); '
             'the rest is masked</p>']
    for block in blocks:
        body = "".join(f"<mark>{html.escape(piece)}</mark>" if trained else html.escape(piece)
                       for piece, trained in block.runs)
        parts.append(f"<p><b>{html.escape(block.summary)}</b></p><pre class='preview'>{body}</pre>")
    return "\n".join(parts)


def doctor_rows(text: str, path: str) -> tuple[list[list[str]], str]:
    """The data doctor's findings over every training file (`tunesmith data check`), as table rows
    [file, severity, check, where, message], and a summary line."""
    from ..api import check_data
    from ..data.doctor.report import place

    cfg, message = validate(text, path)
    if cfg is None:
        return [], message
    rows, counts = [], []
    for spec in cfg.data.train:
        try:
            report = check_data(spec.path, max_len=cfg.data.max_length)
        except TunesmithError as exc:
            return rows, f"error: {exc}"
        counts.append(f"{Path(spec.path).name}: {report.summary.get('records', '?')} records, "
                      f"{len(report.findings)} findings")
        for finding in report.findings:
            rows.append([Path(spec.path).name, finding.severity, finding.check, place(finding, report.file),
                         finding.message])
    return rows, "; ".join(counts) or "no training files"
