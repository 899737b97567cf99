"""Experiment tracking (`training.report_to`): TensorBoard, MLflow and Weights & Biases through transformers'
own callbacks, which log the parameters and every metric the Trainer logs, step by step.

tunesmith starts the MLflow / W&B run itself, before training, because the callbacks read their settings only from
environment variables and end their run when training ends, before the run folder's loss plot and model card exist.
A run the callback finds already active is one it uses and leaves open; `finish` then adds the resolved config, the
loss plot and the model card as artifacts and ends it.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..config.schema import RunConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
ARTIFACTS = ("config.yaml", "loss.png", "README.md")  # what the run folder holds at the end, for the tracker


def check_trackers(cfg: RunConfig) -> None:
    """A tracker whose package is missing fails before anything loads, with the command that installs it."""
    for name in cfg.training.trackers():
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"report_to lists {name}, but the {PACKAGES[name]} package is not installed",
                              where="training.report_to",
                              hint=f"pip install {PACKAGES[name]}  (or pip install 'tunesmith[tracking]')")


class Tracking:
    """The trackers of one run: `callbacks()` for the Trainer, `finish(ok)` once the run folder is published."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = run_dir
        self.trackers = cfg.training.trackers()
        self._mlflow = None
        self._wandb = None

    def callbacks(self) -> list:
        callbacks = []
        if "tensorboard" in self.trackers:
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))))
        if "mlflow" in self.trackers:
            from transformers.integrations import MLflowCallback

            self._start_mlflow()
            callbacks.append(MLflowCallback())
        if "wandb" in self.trackers:
            from transformers.integrations import WandbCallback

            self._start_wandb()
            callbacks.append(WandbCallback())
        return callbacks

    @property
    def run_name(self) -> str:
        return self.cfg.training.tracking.run_name or self.run_dir.resolve().name

    def _start_mlflow(self) -> None:
        import mlflow

        tracking = self.cfg.training.tracking
        if tracking.mlflow_tracking_uri:
            mlflow.set_tracking_uri(tracking.mlflow_tracking_uri)
        mlflow.set_experiment(tracking.experiment)
        if mlflow.active_run() is not None:  # a caller's run (a notebook's): this one is nested in it
            self._mlflow = mlflow.start_run(run_name=self.run_name, nested=True)
        else:
            self._mlflow = mlflow.start_run(run_name=self.run_name)
        # tunesmith's own settings (method.r, data.max_length...) beside the Trainer's arguments the callback logs.
        params = _flatten(self.cfg.model_dump(mode="json"))
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            mlflow.log_params(dict(list(params.items())[start:start + 100]))
        log.info("mlflow: run %s in experiment %s at %s", self._mlflow.info.run_id, tracking.experiment,
                 mlflow.get_tracking_uri())

    def _start_wandb(self) -> None:
        import wandb

        tracking = self.cfg.training.tracking
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # WANDB_MODE=offline (or `wandb offline`) keeps the run in RUN/wandb/ with no network.
        self._wandb = wandb.init(project=tracking.experiment, name=self.run_name, dir=str(self.run_dir),
                                 config=self.cfg.model_dump(mode="json"), reinit="finish_previous")
        log.info("wandb: run %s in project %s (%s)", self._wandb.id, tracking.experiment, self._wandb.dir)

    def finish(self, ok: bool) -> None:
        """Attach the run folder's config, loss plot and model card, and end the runs started here."""
        files = [self.run_dir / name for name in ARTIFACTS if (self.run_dir / name).is_file()]
        if self._mlflow is not None:
            import mlflow

            for path in files:
                mlflow.log_artifact(str(path), run_id=self._mlflow.info.run_id)
            mlflow.end_run(status="FINISHED" if ok else "FAILED")
            self._mlflow = None
        if self._wandb is not None:
            for path in files:
                self._wandb.save(str(path), base_path=str(self.run_dir), policy="now")
            self._wandb.finish(exit_code=0 if ok else 1)
            self._wandb = None


def _flatten(node, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): str(node)[:6000]}  # MLflow keeps a parameter's value up to 6000 characters
