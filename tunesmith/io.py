"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, TunesmithError


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# Staging folders are named `.staging-tunesmith-<pid>-<random>`: a later start can tell its own leftovers (their
# process is gone) from anything else. `.staging-` plus tempfile's eight characters is the older name; those are
# removed only when empty, which is what a kill during a final save leaves.
STAGING_PREFIX = ".staging-"
_OURS = re.compile(r"\.staging-tunesmith-(\d+)-[a-z0-9_]+")
_OLDER = re.compile(r"\.staging-[a-z0-9_]{8}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def clean_stale_staging(folder: str | Path) -> list[Path]:
    """Remove staging folders that an earlier, killed tunesmith process left in `folder`; returns them."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.is_dir() or entry.is_symlink():
            continue
        ours = _OURS.fullmatch(entry.name)
        if ours and int(ours.group(1)) != os.getpid() and not _alive(int(ours.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif _OLDER.fullmatch(entry.name) and not any(entry.iterdir()):
            entry.rmdir()
            removed.append(entry)
    return removed


def make_staging_dir(dest: str | Path) -> Path:
    """A new staging folder inside `dest` (created), after removing stale ones an earlier killed run left there."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(dest)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}tunesmith-{os.getpid()}-", dir=dest))


def check_writable(path: str | Path, where: str, *, folder: bool = False) -> Path:
    """Fail early, before any model is loaded, when `path` cannot be written: a file where a folder is wanted (or
    the reverse), a read-only place, /proc. Creates the folder (a file's: its parent); never creates the file."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, but a folder is needed here", where=where,
                             hint="choose a folder path (it is created when missing)")
    if not folder and path.is_dir():
        raise ConfigError(f"{path} is a folder, but a file is needed here", where=where,
                             hint="name a file inside it")
    probe_dir = path if folder else path.parent
    try:
        probe_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=probe_dir, prefix=".tunesmith-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to {probe_dir}: {exc.strerror or exc}", where=where,
                             hint="choose a writable folder") from None
    return path


def environment_error(exc: BaseException) -> TunesmithError | None:
    """A user-facing error for a failure of the machine rather than of tunesmith (disk full, read-only place,
    permissions); None for anything else. Libraries that wrap OSError (torch, safetensors) are recognised by text."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    name = getattr(exc, "filename", None)
    place = f" {name}" if name else ""
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text or "StorageFull" in text:
        return TunesmithError(f"the disk is full: cannot write{place}", where=str(name) if name else None,
                              hint="free some space, or write to another disk")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return TunesmithError(f"cannot write{place}: {exc.strerror}", where=str(name) if name else None,
                              hint="choose a writable place")
    return None


def publish_dir_contents(staging: Path, dest: Path) -> None:
    """Move every file of `staging` into `dest` with os.replace (atomic per file), then drop `staging` (and any
    stale staging folder a killed earlier run left in `dest`)."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        target = dest / item.name
        if item.is_dir():
            if target.exists():
                shutil.rmtree(target)
            os.replace(item, target)
        else:
            os.replace(item, target)
    shutil.rmtree(staging, ignore_errors=True)
    clean_stale_staging(dest)


@contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """A staging folder inside `dest` (`make_staging_dir`) to write a result into; when the block succeeds its files
    are published into `dest` together (`publish_dir_contents`), when it fails the folder is removed: `dest` never
    holds half of a result."""
    staging = make_staging_dir(dest)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_dir_contents(staging, Path(dest))
