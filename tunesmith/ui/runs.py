"""The Train tab: training runs launched as processes of their own, read back from their run folders.

A run is `python -m tunesmith.cli.main train CONFIG` in a new session (its own process group), so closing the UI
does not stop it and a reopened UI finds it again. The run folder is the source of truth (metrics.jsonl, train.log,
checkpoints, tunesmith_run.json once saved); the UI adds one small state file there, `.tunesmith-ui.json` (pid,
command, times; a dot file, which the trainer's check of a run folder ignores), and the process's console output in
`.tunesmith-ui.log`. Stop sends SIGTERM to the process group: the trainer stops where it is, and `--resume`
continues from the newest complete checkpoint (training/checkpoints.py), as `tunesmith train CONFIG --resume` does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_json
from ..models.loading import RUN_META

STATE_FILE = ".tunesmith-ui.json"
CONSOLE_FILE = ".tunesmith-ui.log"
# training.run.RUN_LOG, written out: importing the training stack for one name would add seconds to the UI's start.
RUN_LOG = "train.log"

# The processes this UI started: their exit codes are collected (no zombies) and recorded in the state file.
_children: dict[int, subprocess.Popen] = {}


def launch(config_path: str, output_dir: str, *, resume: bool = False, cwd: str | None = None) -> dict:
    """Start training `config_path` (already validated; its `training.output_dir` is `output_dir`) detached from
    this process; returns the state written to the run folder. Refuses when the run is already training."""
    run_dir = Path(output_dir)
    if status(run_dir)["status"] == "running":
        raise ConfigError(f"{run_dir} is already training (pid {read_state(run_dir)['pid']})",
                          where="training.output_dir", hint="stop it first, or choose another output folder")
    command = [sys.executable, "-m", "tunesmith.cli.main", "train", str(config_path), *(["--resume"] if resume else [])]
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / CONSOLE_FILE, "ab") as console:
        process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=console,
                                   stderr=subprocess.STDOUT, start_new_session=True, env=env)
    _children[process.pid] = process
    state = {"pid": process.pid, "command": command, "config": str(config_path), "cwd": cwd or os.getcwd(),
             "started": time.time(), "resume": resume}
    atomic_write_json(run_dir / STATE_FILE, state)
    return state


def read_state(run_dir: Path) -> dict | None:
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None


def _alive(pid: int, command: list[str]) -> bool:
    """Whether `pid` is still the training process started with `command` (not a finished one's reused pid)."""
    if pid in _children:
        return _children[pid].poll() is None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie: finished
        return False
    arguments = [part.decode(errors="replace") for part in cmdline if part]
    # Empty while the process is still starting; a preloaded allocator restarts the same command line
    # (speed.cpu_allocator), so its arguments match.
    return not arguments or arguments[-len(command) + 1:] == command[1:]


def status(run_dir: str | Path) -> dict:
    """{status: running | finished | stopped | failed | not started, ...the state}. Finished: the run saved its
    result (tunesmith_run.json written after this launch)."""
    run_dir = Path(run_dir)
    state = read_state(run_dir) or {}
    meta = run_dir / RUN_META
    if state and _alive(state["pid"], state["command"]):
        return {**state, "status": "running"}
    if state.get("pid") in _children and "exit_code" not in state:
        state["exit_code"] = _children.pop(state["pid"]).returncode
        atomic_write_json(run_dir / STATE_FILE, state)
    if meta.exists() and meta.stat().st_mtime >= state.get("started", 0):
        return {**state, "status": "finished"}
    if state.get("stopped"):
        return {**state, "status": "stopped"}
    if state:
        return {**state, "status": "failed"}
    return {"status": "not started"}


def stop(run_dir: str | Path) -> str:
    """SIGTERM to the run's process group; the message says what happened."""
    run_dir = Path(run_dir)
    current = status(run_dir)
    if current["status"] != "running":
        return f"{run_dir} is not training ({current['status']})"
    try:
        os.killpg(current["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return f"{run_dir} had already stopped"
    state = read_state(run_dir) or {}
    atomic_write_json(run_dir / STATE_FILE, {**state, "stopped": time.time()})
    for _ in range(50):  # the trainer exits at once on SIGTERM; wait for it so the list shows it stopped
        if not _alive(current["pid"], current["command"]):
            break
        time.sleep(0.1)
    return f"stopped {run_dir}; resume continues from its newest complete checkpoint"


@dataclass
class Progress:
    status: str
    step: int
    total: int | None
    last_loss: float | None
    points: int
    records: list[dict]

    def line(self) -> str:
        of = f" of {self.total}" if self.total else ""
        loss = f"{self.last_loss:.4f}" if self.last_loss is not None else "-"
        return f"{self.status} · step {self.step}{of} · loss points: {self.points} · last loss {loss}"


def planned_steps(run_dir: Path, state: dict) -> int | None:
    """The run's max_steps, from its config (the run's own resolved config.yaml, else the launched one)."""
    import yaml

    for path in (run_dir / "config.yaml", Path(state.get("cwd", ".")) / state.get("config", "")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            return int(raw["training"]["max_steps"])
        except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
            continue
    return None


def progress(run_dir: str | Path) -> Progress:
    from ..training.callbacks import read_metrics

    run_dir = Path(run_dir)
    current = status(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    step = max((int(r.get("step", 0)) for r in records), default=0)
    return Progress(current["status"], step, planned_steps(run_dir, current), losses[-1] if losses else None,
                    len(losses), records)


def curve_findings(records: list[dict], max_grad_norm: float | None = 1.0) -> list[list[str]]:
    """The curve doctor's findings over the logged metrics, as rows [severity, step, message, advice]."""
    from ..diagnostics.curves import diagnose

    return [[f.severity, "" if f.step is None else str(f.step), f.message, f.advice]
            for f in diagnose(records, max_grad_norm=max_grad_norm)]


def loss_figure(records: list[dict], title: str):
    from ..plots import loss_figure as figure

    return figure(records, title)


def console_tail(run_dir: str | Path, lines: int = 30) -> str:
    """The end of the run's console output (what `tunesmith train` printed)."""
    path = Path(run_dir) / CONSOLE_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def find_runs(root: str | Path) -> list[Path]:
    """Run folders under `root` (and `root` itself): those with a state file, a run log or a saved result."""
    root = Path(root)
    if not root.is_dir():
        return []
    markers = (STATE_FILE, RUN_LOG, RUN_META, "metrics.jsonl")
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    return [p for p in candidates if any((p / m).exists() for m in markers)]


def run_rows(root: str | Path) -> list[list[str]]:
    """[run folder, status, step, last loss, started] for each run under `root`, newest first."""
    rows = []
    for run_dir in find_runs(root):
        p = progress(run_dir)
        state = read_state(run_dir) or {}
        started = state.get("started") or (run_dir / RUN_LOG).stat().st_mtime if (
            state or (run_dir / RUN_LOG).exists()) else 0
        rows.append((started, [str(run_dir), p.status, f"{p.step}" + (f"/{p.total}" if p.total else ""),
                               "" if p.last_loss is None else f"{p.last_loss:.4f}",
                               time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else ""]))
    return [row for _, row in sorted(rows, key=lambda item: -item[0])]
