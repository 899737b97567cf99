"""Adapter sets: several LoRA adapters over one base model, the base loaded once (docs/multitask.md).

A set is a small YAML manifest:

    base: ../models/SmolLM2-135M-Instruct      # any model reference; a relative path is read from this file's folder
    base_name: base                            # optional: the name the base alone answers to (default "base")
    template: auto                             # optional: the template of the base alone
    default: support                           # optional: the adapter used when none is named (default: the first)
    adapters:
      support: runs/support                    # a tunesmith run folder (its training template is kept) ...
      sql:                                     # ... or a PEFT adapter folder made elsewhere
        path: adapters/sql
        template: chatml

Every adapter is checked against the base before any weights load: the base it names (a run's tunesmith_run.json,
a PEFT folder's adapter_config.json) must be the same weights as the set's base (the same reference, or local folders
with the same fingerprint: config, weight-file headers and sampled weight bytes) and its tokenizer, where it saved
one, the same vocabulary. The weights are then loaded with PEFT's public API: the base once, each adapter with
`load_adapter(..., adapter_name=NAME)`; a batch for one adapter runs under `set_adapter`, the base alone under
`disable_adapter()`, and a batch mixing adapters passes PEFT's `adapter_names=[...]` (mixed-adapter batches).
Only LoRA-family adapters (LoRA, DoRA, rsLoRA, QLoRA runs loaded unquantised) can share a batch that way, so a set
holds those only.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.loading import read_yaml_file
from ..config.schema import ModelConfig
from ..errors import ConfigError, ModelError, TunesmithError
from ..models.loading import LoadedModel, first_line, load_model, load_tokenizer, read_run_meta, source_kwargs
from .router import AUTO, Router, RouterSpec, parse_router

MANIFEST_KEYS = {"base", "base_name", "template", "default", "adapters", "router"}
ADAPTER_KEYS = {"path", "template", "suite", "skip_base_check"}
# PEFT keeps adapters in torch ModuleDicts, whose keys cannot hold "."; "__base__" is PEFT's name for "no adapter"
# in a mixed batch. Names also travel as the OpenAI `model` field, so they stay plain.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
PEFT_BASE = "__base__"
# Bytes read from each weight file for the fingerprint: enough to tell fine-tuned copies of one architecture apart
# without reading gigabytes (sampled at the start, middle and end of the tensor data).
SAMPLE_BYTES = 1 << 16
LORA_TYPES = {"LORA"}


class NameTaken(ConfigError):
    """An adapter name already in the set (the server answers it with 409 Conflict)."""

    http_status = 409


def is_adapter_set(ref: str | Path) -> bool:
    """Whether a model reference names an adapter-set manifest (a .yaml/.yml file) rather than a model or run."""
    return Path(ref).suffix.lower() in (".yaml", ".yml") and not Path(ref).is_dir()


@dataclass
class AdapterEntry:
    name: str
    path: Path
    template: str  # the template name the adapter's prompts are rendered with
    base_ref: str | None  # the base it was trained on, as recorded (None: not recorded)
    skip_base_check: bool = False
    suite: Path | None = None  # its evaluation suite (`tunesmith eval SET.yaml`)


@dataclass
class Manifest:
    file: Path
    base: str
    base_name: str = "base"
    template: str = "auto"
    default: str | None = None
    adapters: dict[str, AdapterEntry] = field(default_factory=dict)
    router: RouterSpec | None = None  # how `auto` requests are routed (inference/router.py)
    router_raw: Any = None  # the section as written, saved back unchanged by write_manifest

    def where(self, *keys: str) -> str:
        """`FILE: adapters.NAME.field` for error messages."""
        return f"{self.file}: {'.'.join(keys)}" if keys else str(self.file)


# ----------------------------------------------------------------------------------------------------------- manifest

def _resolve_path(text: str, folder: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (folder / path)


def _base_ref(text: str, folder: Path) -> str:
    """A relative path in the manifest is read from the manifest's folder; a hub id or short name stays as written."""
    candidate = _resolve_path(text, folder)
    if text.startswith((".", "/", "~")) or candidate.exists():
        return str(candidate.resolve())
    return text


def read_manifest(path: str | Path) -> Manifest:
    """Parse and check a manifest's fields and folders (nothing heavy loads); errors name the file and field."""
    file = Path(path)
    raw = read_yaml_file(file, "adapter set")
    if not isinstance(raw, dict):
        raise ConfigError("an adapter set is a mapping with 'base' and 'adapters'", where=str(file))
    unknown = sorted(set(raw) - MANIFEST_KEYS)
    if unknown:
        raise ConfigError(f"unknown field '{unknown[0]}'", where=f"{file}: {unknown[0]}",
                          hint=f"an adapter set has: {', '.join(sorted(MANIFEST_KEYS))}")
    folder = file.resolve().parent
    base = raw.get("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError("'base' must name the base model (a folder, hub id, GGUF file or short name)",
                          where=f"{file}: base")
    manifest = Manifest(file=file, base=_base_ref(base.strip(), folder))
    for key in ("base_name", "template", "default"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}", where=manifest.where(key))
    manifest.base_name = raw.get("base_name") or "base"
    manifest.template = raw.get("template") or "auto"
    _check_name(manifest.base_name, manifest.where("base_name"))
    adapters = raw.get("adapters")
    if not isinstance(adapters, dict) or not adapters:
        raise ConfigError("'adapters' must map at least one name to an adapter folder", where=manifest.where("adapters"),
                          hint="adapters:\n    NAME: runs/NAME")
    for name, spec in adapters.items():
        add_entry(manifest, str(name), spec, folder)
    default = raw.get("default")
    if default is not None and default not in manifest.adapters and default != manifest.base_name:
        raise ConfigError(f"'{default}' is not an adapter of this set", where=manifest.where("default"),
                          hint=f"one of: {', '.join([*manifest.adapters, manifest.base_name])}")
    manifest.default = default or next(iter(manifest.adapters))
    if raw.get("router") is not None:
        manifest.router_raw = raw["router"]
        check_router(manifest)
    return manifest


def check_router(manifest: Manifest) -> None:
    """(Re)read the manifest's `router:` section against the set's current names (after a removal, too)."""
    if manifest.router_raw is None:
        manifest.router = None
        return
    manifest.router = parse_router(manifest.router_raw, manifest.file, [manifest.base_name, *manifest.adapters],
                                   manifest.default or next(iter(manifest.adapters)))


def _check_name(name: str, where: str) -> None:
    if not NAME.match(name) or name == PEFT_BASE:
        raise ConfigError(f"'{name}' cannot name an adapter: use letters, digits, '_' and '-' (64 at most)",
                          where=where)
    if name == AUTO:  # `model: auto` asks the router to choose
        raise ConfigError(f"'{AUTO}' is kept for routing (model: auto) and cannot name an adapter", where=where)


def add_entry(manifest: Manifest, name: str, spec: Any, folder: Path) -> AdapterEntry:
    """Check one `adapters:` entry (a path, or a mapping with path / template / skip_base_check) and add it."""
    where = manifest.where("adapters", name)
    _check_name(name, where)
    if name == manifest.base_name or name in manifest.adapters:
        raise NameTaken(f"the name '{name}' is taken (by the base or another adapter)", where=where)
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        raise ConfigError("must be a folder, or a mapping with 'path' (and optional 'template')", where=where)
    unknown = sorted(set(spec) - ADAPTER_KEYS)
    if unknown:
        raise ConfigError(f"unknown field '{unknown[0]}'", where=f"{where}.{unknown[0]}",
                          hint=f"an adapter has: {', '.join(sorted(ADAPTER_KEYS))}")
    if not isinstance(spec.get("path"), str) or not spec["path"].strip():
        raise ConfigError("'path' must name the adapter's folder", where=f"{where}.path")
    for key in ("template", "suite"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ConfigError(f"must be a string, got {spec[key]!r}", where=f"{where}.{key}")
    path = _resolve_path(spec["path"], folder)
    if not path.is_dir():
        raise ConfigError(f"adapter folder not found: {path}", where=f"{where}.path",
                          hint="paths are read from the manifest's folder")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{path} holds no adapter_config.json: not a PEFT adapter", where=f"{where}.path",
                          hint="a set holds LoRA adapters (run folders of the LoRA family, or PEFT LoRA folders)")
    try:
        adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {config_file}: {exc}", where=f"{where}.path") from None
    peft_type = str(adapter_config.get("peft_type", "")).upper()
    if peft_type not in LORA_TYPES:
        raise ConfigError(f"a {peft_type or 'non-PEFT'} adapter cannot join a set: only LoRA-family adapters share "
                          f"one base and a mixed batch", where=f"{where}.path")
    meta = read_run_meta(path)
    base_ref = None
    if meta is not None:
        if meta.get("artifact") == "full":
            raise ConfigError(f"{path} is a full model, not an adapter", where=f"{where}.path")
        base_ref = str(meta["base_model"].get("name_or_path") or "") or None
    base_ref = base_ref or adapter_config.get("base_model_name_or_path")
    template = spec.get("template") or (meta or {}).get("template") or "auto"
    suite = _resolve_path(spec["suite"], folder).resolve() if spec.get("suite") else None
    entry = AdapterEntry(name, path.resolve(), template, base_ref, bool(spec.get("skip_base_check", False)), suite)
    manifest.adapters[name] = entry
    return entry


def write_manifest(manifest: Manifest) -> None:
    """Save a manifest (paths relative to its folder where they lie beneath it). Comments are not kept."""
    import yaml

    from ..io import atomic_write_text

    folder = manifest.file.resolve().parent

    def rel(path: str | Path) -> str:
        path = Path(path)
        try:
            return str(path.resolve().relative_to(folder))
        except ValueError:
            return str(path)

    data: dict[str, Any] = {"base": rel(manifest.base) if Path(manifest.base).exists() else manifest.base}
    if manifest.base_name != "base":
        data["base_name"] = manifest.base_name
    if manifest.template != "auto":
        data["template"] = manifest.template
    if manifest.default and manifest.default != next(iter(manifest.adapters), None):
        data["default"] = manifest.default
    adapters: dict[str, Any] = {}
    for entry in manifest.adapters.values():
        spec: dict[str, Any] = {"path": rel(entry.path)}
        meta = read_run_meta(entry.path) or {}
        if entry.template != (meta.get("template") or "auto"):
            spec["template"] = entry.template
        if entry.suite is not None:
            spec["suite"] = rel(entry.suite)
        if entry.skip_base_check:
            spec["skip_base_check"] = True
        adapters[entry.name] = spec["path"] if len(spec) == 1 else spec
    data["adapters"] = adapters
    if manifest.router_raw is not None:
        data["router"] = manifest.router_raw
    manifest.file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest.file, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def add_to_manifest(file: str | Path, name: str, adapter: str | Path, *, template: str | None = None,
                    base: str | None = None) -> Manifest:
    """`tunesmith adapters add`: add a run or PEFT folder to a set (created when missing, its base then the adapter's
    own, or `base`), checked as loading checks it. Returns the saved manifest."""
    file = Path(file)
    folder = file.resolve().parent
    if file.exists():
        manifest = read_manifest(file)
        if base is not None and _base_ref(base, folder) != manifest.base:
            raise ConfigError(f"the set's base is {manifest.base}; --base cannot change it", where="--base")
    else:
        manifest = Manifest(file=file, base="")
    spec: dict[str, Any] = {"path": str(Path(adapter).resolve())}
    if template:
        spec["template"] = template
    entry = add_entry(manifest, name, spec, Path.cwd())
    if not manifest.base:
        ref = base or entry.base_ref
        if not ref:
            raise ConfigError(f"{entry.path} does not record its base model", where="--base",
                              hint="name the set's base with --base")
        manifest.base = _base_ref(ref, Path.cwd())
        manifest.default = name
    check_adapters(manifest, only=[name])
    write_manifest(manifest)
    return manifest


def remove_from_manifest(file: str | Path, name: str) -> Manifest:
    manifest = read_manifest(file)
    if name not in manifest.adapters:
        raise unknown_adapter(manifest.file, name, list(manifest.adapters))
    if len(manifest.adapters) == 1:
        raise ConfigError(f"'{name}' is the set's only adapter; a set needs one", where=str(manifest.file),
                          hint="delete the file to drop the set")
    del manifest.adapters[name]
    if manifest.default == name:
        manifest.default = next(iter(manifest.adapters))
    check_router(manifest)  # a router naming the removed adapter must be edited first
    write_manifest(manifest)
    return manifest


def unknown_adapter(file: Path | str, name: str, known: list[str], where: str = "adapter") -> ConfigError:
    return ConfigError(f"no adapter '{name}' in the set {file}", where=where, hint=f"one of: {', '.join(known)}")


# ------------------------------------------------------------------------------------------------ same base checks

def _local_folder(ref: str) -> Path | None:
    """The local folder a model reference loads from (a GGUF is dequantised to its cached folder), or None for a
    hub id that is not on this machine."""
    try:
        resolved, _ = source_kwargs(ModelConfig(name_or_path=ref))
    except TunesmithError:
        return None
    path = Path(resolved)
    if path.is_dir():
        return path.resolve()
    try:  # a hub id already downloaded: its snapshot in the Hugging Face cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, local_files_only=True)).resolve()
    except Exception:  # noqa: BLE001 - not cached, not a repo id: nothing local to compare
        return None


def base_fingerprint(folder: Path) -> str:
    """A cheap identity of a model folder's weights: its config (less the fields saving rewrites), each weight
    file's name, size, safetensors header, and sampled bytes of the tensor data. Equal for copies of one model,
    different for a fine-tuned or re-initialised one of the same architecture."""
    digest = hashlib.sha256()
    config_file = folder / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"):
            config.pop(key, None)
        digest.update(json.dumps(config, sort_keys=True).encode())
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for file in weights:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as handle:
            start = 0
            if file.suffix == ".safetensors":  # 8-byte header length, then the JSON header
                header_len = int.from_bytes(handle.read(8), "little")
                digest.update(handle.read(header_len))
                start = 8 + header_len
            for offset in (start, start + (size - start) // 2, max(start, size - SAMPLE_BYTES)):
                handle.seek(offset)
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def vocabulary_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


class _BaseChecker:
    """Compares each adapter's recorded base with the set's, computing each folder's fingerprint once."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.base_folder = _local_folder(manifest.base)
        self._prints: dict[Path, str] = {}

    def _print(self, folder: Path) -> str:
        if folder not in self._prints:
            self._prints[folder] = base_fingerprint(folder)
        return self._prints[folder]

    def check(self, entry: AdapterEntry) -> None:
        where = self.manifest.where("adapters", entry.name)
        skip = "if you know it is the same model, set `skip_base_check: true` on this adapter"
        if entry.skip_base_check:
            return
        if not entry.base_ref:
            raise ModelError(f"{entry.path} does not record the base it was trained on", where=where,
                             hint=skip)
        if entry.base_ref == self.manifest.base:
            return
        theirs = _local_folder(entry.base_ref)
        if theirs is None or self.base_folder is None:
            missing = entry.base_ref if theirs is None else self.manifest.base
            raise ModelError(f"adapter trained on '{entry.base_ref}', the set's base is '{self.manifest.base}'; "
                             f"'{missing}' is not on this machine to compare", where=where,
                             hint=f"point 'base:' at the model the adapter names, or {skip}")
        if theirs == self.base_folder:
            return
        mine, other = self._print(self.base_folder), self._print(theirs)
        if mine != other:
            raise ModelError(f"adapter trained on a different base: {entry.base_ref} (fingerprint {other}) is not "
                             f"the set's base {self.manifest.base} (fingerprint {mine})", where=where,
                             hint="every adapter of a set must be trained on the same base weights")


def check_adapters(manifest: Manifest, tokenizer=None, *, only: list[str] | None = None,
                   trust_remote_code: bool = False) -> None:
    """Every adapter (or those in `only`) has the set's base and, where it saved a tokenizer, its vocabulary."""
    from ..models.loading import load_run_tokenizer

    checker = _BaseChecker(manifest)
    if tokenizer is None:
        tokenizer = load_tokenizer(ModelConfig(name_or_path=manifest.base, trust_remote_code=trust_remote_code))
    vocab = vocabulary_fingerprint(tokenizer)
    for name in only or list(manifest.adapters):
        entry = manifest.adapters[name]
        checker.check(entry)
        if any((entry.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            theirs = load_run_tokenizer(entry.path, trust_remote_code=trust_remote_code)
            if vocabulary_fingerprint(theirs) != vocab:
                raise ModelError(f"the adapter's tokenizer ({len(theirs)} tokens) is not the base's "
                                 f"({len(tokenizer)} tokens)", where=manifest.where("adapters", name, "tokenizer"),
                                 hint="an adapter trained with added tokens cannot share the base with others")


# ---------------------------------------------------------------------------------------------------------- loading

class AdapterSet:
    """The base model once in memory with every adapter of a manifest loaded beside it (a PeftModel).

    `names` lists what can be asked for: the base's own name, then the adapters. `add` and `remove` change the set
    in memory (the server's management calls; the manifest file is left as it is); they must not run while the
    model generates, so the server runs them on its generating thread.
    """

    def __init__(self, manifest: Manifest, model, tokenizer):
        self.manifest, self.model, self.tokenizer = manifest, model, tokenizer
        # Routes `auto` requests; a router with a classifier is attached by tunesmith.api.load_router (the
        # classification run loads in the tasks layer, above this one).
        self.router: Router | None = None
        if manifest.router is not None and manifest.router.classifier is None:
            self.router = Router(manifest.router, lambda: self.names)
        self._lock = threading.Lock()  # guards `manifest.adapters` between the HTTP threads and the generating one

    @property
    def base_name(self) -> str:
        return self.manifest.base_name

    @property
    def default(self) -> str:
        return self.manifest.default or self.base_name

    @property
    def names(self) -> list[str]:
        with self._lock:
            return [self.base_name, *self.manifest.adapters]

    def has(self, name: str) -> bool:
        with self._lock:
            return name == self.base_name or name in self.manifest.adapters

    def template_name(self, name: str) -> str:
        with self._lock:
            if name == self.base_name:
                return self.manifest.template
            if name not in self.manifest.adapters:
                raise unknown_adapter(self.manifest.file, name, [self.base_name, *self.manifest.adapters])
            return self.manifest.adapters[name].template

    def attach_router(self, classify) -> Router:
        """The router of the manifest, with its classifier's `classify` (texts → [{"label", "score"}])."""
        if self.manifest.router is None:
            raise ConfigError("the set has no router", where=self.manifest.where("router"))
        self.router = Router(self.manifest.router, lambda: self.names, classify)
        return self.router

    def loaded(self) -> LoadedModel:
        return LoadedModel(self.model, self.tokenizer, self.template_name(self.default),
                           {"adapter_set": str(self.manifest.file)})

    def add(self, name: str, path: str | Path, template: str | None = None) -> None:
        """Check an adapter folder against the base and load it under `name`."""
        spec = {"path": str(path), **({"template": template} if template else {})}
        with self._lock:
            entry = add_entry(self.manifest, name, spec, Path.cwd())
        try:
            check_adapters(self.manifest, self.tokenizer, only=[name])
            _load_into(self.model, entry, self.manifest)
        except BaseException:
            with self._lock:
                self.manifest.adapters.pop(name, None)
            raise

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self.manifest.adapters:
                raise unknown_adapter(self.manifest.file, name, list(self.manifest.adapters))
            if len(self.manifest.adapters) == 1:
                raise ConfigError(f"'{name}' is the set's only adapter; a set keeps at least one", where="adapter")
            if self.manifest.router is not None and name in self.manifest.router.targets():
                # Otherwise `auto` requests would be routed to a name that no longer answers.
                raise ConfigError(f"the set's router sends requests to '{name}'; it cannot be removed while "
                                  f"serving", where=self.manifest.where("router"))
            del self.manifest.adapters[name]
            if self.manifest.default == name:
                self.manifest.default = next(iter(self.manifest.adapters))
            if name in self.model.active_adapters:  # PEFT would warn and pick another itself
                self.model.set_adapter(next(iter(self.manifest.adapters)))
        self.model.delete_adapter(name)

    @contextmanager
    def using(self, names: list[str]):
        """Generate a batch whose row i uses adapter `names[i]`; yields extra keyword arguments for `generate`.
        One adapter: PEFT's `set_adapter` (the base alone: `disable_adapter()`); several: a mixed batch."""
        for name in set(names):
            if not self.has(name):
                raise unknown_adapter(self.manifest.file, name, self.names)
        distinct = set(names)
        if len(distinct) > 1:
            yield {"adapter_names": [PEFT_BASE if n == self.base_name else n for n in names]}
            return
        (name,) = distinct
        if name == self.base_name:
            with self.model.disable_adapter():
                yield {}
            return
        self.model.set_adapter(name)
        yield {}


def _load_into(model, entry: AdapterEntry, manifest: Manifest) -> None:
    try:
        model.load_adapter(str(entry.path), adapter_name=entry.name, is_trainable=False)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:  # shape mismatch, bad weights file
        raise ModelError(f"cannot load the adapter onto the base: {first_line(exc)}",
                         where=manifest.where("adapters", entry.name)) from None


def load_adapter_set(manifest: str | Path | Manifest, *, dtype: str = "auto",
                     trust_remote_code: bool = False) -> AdapterSet:
    """Read and check a manifest, load its base once and every adapter onto it."""
    from peft import PeftModel

    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    base_cfg = ModelConfig(name_or_path=manifest.base, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(base_cfg)
    check_adapters(manifest, tokenizer, trust_remote_code=trust_remote_code)  # all checked before weights load
    base = load_model(base_cfg)
    entries = list(manifest.adapters.values())
    first = entries[0]
    try:
        model = PeftModel.from_pretrained(base, str(first.path), adapter_name=first.name, is_trainable=False)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise ModelError(f"cannot load the adapter onto the base: {first_line(exc)}",
                         where=manifest.where("adapters", first.name)) from None
    for entry in entries[1:]:
        _load_into(model, entry, manifest)
    model.eval()
    return AdapterSet(manifest, model, tokenizer)

