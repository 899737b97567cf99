"""`tunesmith train CONFIG --nproc N`: start N processes of the same command on this machine.

torch's elastic launcher (what `torchrun` and `accelerate launch` run underneath) does the work: a local rendezvous on
a free port, RANK / WORLD_SIZE / LOCAL_RANK for each process, and, when one process fails, the others stopped and the
failure reported. tunesmith turns that report into one message and an exit code. Several machines are started with
`torchrun` or `accelerate launch` themselves (docs/distributed.md); the processes behave the same either way.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid

from ..errors import TunesmithError
from ..hardware import physical_cores


class DistributedRunFailed(TunesmithError):
    """A process of a multi-process run failed; the launcher stopped the others."""

    exit_code = 1


def worker_command(config: str, overrides: list[str], *, resume: bool, show_log: bool) -> list[str]:
    """The command each process runs: the same `tunesmith train`, without --nproc."""
    return ["-m", "tunesmith.cli.main", *(["--verbose"] if show_log else []), "train", config, *overrides,
            *(["--resume"] if resume else [])]


def launch_local(args: list[str], nproc: int, *, cuda: bool, executable: str = sys.executable) -> None:
    """Run `executable *args` in `nproc` processes on this machine and wait for all of them; raise
    `DistributedRunFailed` naming the rank that failed first (the launcher stops the others: no rank hangs)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if not cuda:
        # The processes share this machine's cores: one share each, set before they import torch (as torchrun does).
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, physical_cores() // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"tunesmith-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    try:
        elastic_launch(config, entrypoint=executable)(*args)
    except ChildFailedError as exc:
        raise _failure(exc, nproc) from None


def _failure(exc, nproc: int) -> DistributedRunFailed:
    rank, failure = exc.get_first_failure()
    killed = failure.exitcode < 0  # the launcher reports a signal as its negative number
    how = f"was killed by {signal.Signals(-failure.exitcode).name}" if killed else f"exited with code {failure.exitcode}"
    others = sorted(r for r in exc.failures if r != rank)
    also = f" (rank{'s' * (len(others) > 1)} {', '.join(map(str, others))} failed too)" if others else ""
    error = DistributedRunFailed(
        f"rank {rank} of {nproc} {how}{also}; the launcher stopped the other processes",
        where="--nproc",
        hint="its error is printed above; `tunesmith train CONFIG --nproc N --resume` continues from the newest "
             "complete checkpoint")
    codes = {f.exitcode for f in exc.failures.values()}
    if len(codes) == 1 and not killed and failure.exitcode > 0:
        error.exit_code = failure.exitcode  # every rank stopped on the same error (a config error: 2)
    return error
