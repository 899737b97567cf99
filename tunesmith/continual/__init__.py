"""Continual learning: `tunesmith continual PIPELINE.yaml` trains an ordered list of stages, each from the previous
stage's result, and scores every task seen so far after each (the retention matrix). docs/continual.md.

Design: every stage is a normal tunesmith run (`recipes.train`, the shared run skeleton); this package only chooses
what each run starts from and trains on, and scores the results.
- The previous stage's result is what the next run starts from, as a plain model folder: a LoRA adapter is folded
  into its base (float32), and the next stage trains a fresh adapter on top. So "the model the run starts from",
  which the run config's `retain:` options (L2-SP's θ₀, EWC's Fisher, the KD teacher) are defined against, is
  exactly the previous stage, and a `retain:` weight of 0 is the sequential baseline.
- Strategies (`config.py`): sequential, replay (earlier stages' training files mixed in by `data.train` weights),
  l2sp / ewc / kd (the run config's `retain:` section), progressive_lora (the same training as sequential, but the
  stages' adapters are kept apart and stacked exactly on the untouched base: `models.stack_adapters`), merge (each
  stage trained from the base alone, the stages so far merged with the merging engine).
- Modules: `config.py` (the YAML), `stages.py` (data splits, each stage's run config), `models.py` (folds, stacks,
  merges), `scoring.py` (evaluation), `retention.py` (the matrix's summaries), `report.py` (JSON, PNG, card),
  `pipeline.py` (the loop, its state, resume).
"""

from .config import PipelineConfig, load_pipeline, validate_pipeline

_LAZY = {"PipelineResult": "pipeline", "run_pipeline": "pipeline", "retention_summary": "retention"}


def __getattr__(name: str):
    # The pipeline loads torch and datasets: imported on first use, so that `tunesmith continual` checks its YAML
    # (load_pipeline) before the training libraries load, and before it restarts itself with its CPU allocator.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["PipelineConfig", "PipelineResult", "load_pipeline", "retention_summary", "run_pipeline",
           "validate_pipeline"]
