"""Tokenising in several processes.

Why by hand: datasets' `map(num_proc=...)` parallelises a transform of one Arrow dataset, but tunesmith encodes
validated in-memory conversations (read from several files, mixed and split first) and must report a bad record with
its file and line. So the encoding function runs over slices of that list in forked workers, which inherit the
tokenizer, template and samples without pickling them; only the encoded rows travel back. Off Linux (no fork on
Windows; fork is unsafe with macOS system libraries, hence Python's spawn default there) encoding stays in this
process.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Callable, Sequence

from ..errors import DataError
from ..hardware import usable_cpus

# Below this many samples the workers' start-up and the trip back cost more than they save (measured on 2 cores:
# benchmarks/tokenisation.py).
MIN_SAMPLES_PER_WORKER = 500

_job: tuple[Callable, Sequence] | None = None  # set in the parent just before forking; read by the workers


def worker_count(requested: int | None, samples: int) -> int:
    """`data.num_proc`: None = one per available CPU while each gets MIN_SAMPLES_PER_WORKER samples; 1 = serial."""
    if requested is not None:
        return max(1, min(requested, samples))
    return max(1, min(usable_cpus(), samples // MIN_SAMPLES_PER_WORKER))


def map_samples(encode: Callable, samples: Sequence, workers: int) -> list:
    """[encode(s) for s in samples], in `workers` forked processes when there is more than one.

    A DataError raised for a sample reaches the caller as itself (file, line, field and hint kept), the first one in
    sample order, as in a serial run."""
    if workers <= 1 or not sys.platform.startswith("linux"):
        return [encode(sample) for sample in samples]
    global _job
    bounds = [len(samples) * i // workers for i in range(workers + 1)]
    _job = (encode, samples)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_encode_slice, list(zip(bounds, bounds[1:])))
    finally:
        _job = None
    results = []
    for part in parts:
        if isinstance(part, _Failure):
            raise part.error()
        results += part
    return results


class _Failure:
    """A DataError carried back from a worker as plain fields (its keyword-only constructor does not unpickle)."""

    def __init__(self, exc: DataError):
        self.fields = {"message": exc.message, "file": exc.file, "line": exc.line, "field": exc.field,
                       "hint": exc.hint}

    def error(self) -> DataError:
        fields = dict(self.fields)
        return DataError(fields.pop("message"), **fields)


def _encode_slice(bounds: tuple[int, int]) -> list | _Failure:
    encode, samples = _job
    try:
        return [encode(sample) for sample in samples[bounds[0]:bounds[1]]]
    except DataError as exc:
        return _Failure(exc)
