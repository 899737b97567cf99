"""The models between stages: what a stage starts from, and what is evaluated after it.

- The next stage starts from the previous stage's result as a plain model folder: a full run folder is one; a LoRA
  adapter is folded into its base (`merging.adapters.lora_to_base`, streamed, kept in float32 so no part of the
  small update is rounded away); another PEFT adapter is merged by PEFT (`merge_and_unload`).
- progressive_lora: the stages' adapters, each copied unchanged, combined by stacking their ranks
  (`merging.adapters.combine_loras`, concat: exact) into one LoRA adapter on the original base.
- merge: the stages so far merged over the base model with the merging engine (TIES by default).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..io import atomic_write_json
from ..merging import LoraCombineConfig, LoraToBaseConfig, MergeConfig, merge
from ..merging.adapters import combine_loras, lora_to_base
from ..models.loading import RUN_META, load_for_inference, read_run_meta
from ..reporting import Reporter


def is_model_folder(folder: Path) -> bool:
    """A published model folder (the merging code and `save_pretrained` write config.json with the weights, and
    publish the folder at once): an interrupted fold is redone."""
    return (folder / "config.json").is_file()


def fold(run_dir: Path, out: Path, reporter: Reporter) -> Path:
    """The model a run made, as a plain model folder (the run folder itself for a full run)."""
    meta = read_run_meta(run_dir)
    if meta["artifact"] == "full":
        return run_dir
    if is_model_folder(out):
        return out
    adapter = json.loads((run_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if adapter.get("peft_type") == "LORA" and not adapter.get("use_dora"):
        return lora_to_base(LoraToBaseConfig(method="lora_to_base", adapter=str(run_dir), dtype="float32",
                                             max_shard_size="20GB"), out, overwrite=True, reporter=reporter)
    with reporter.status(f"merging the adapter of {run_dir.name} into its base"):
        loaded = load_for_inference(str(run_dir), dtype="float32")
        merged = loaded.model.merge_and_unload()
        staging = out.with_name(f".{out.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        merged.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    return out


def stack_adapters(run_dirs: list[Path], copies: Path, out: Path, reporter: Reporter) -> Path:
    """progressive_lora after a stage: each stage's adapter copied byte for byte under `copies/<run name>/`, its
    base named as the original base (the model the first stage started from), and all of them stacked into one
    adapter at `out` (its ranks side by side: base + Σ sᵢBᵢAᵢ, what the stages trained on, exactly). `out` is also
    a tunesmith run folder (tunesmith_run.json), so `tunesmith chat` and `eval` open it."""
    first = json.loads((run_dirs[0] / "adapter_config.json").read_text(encoding="utf-8"))
    entries = []
    for run_dir in run_dirs:
        copy = copies / run_dir.name
        if not (copy / "adapter_config.json").is_file():
            staging = copies / f".{run_dir.name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            shutil.copy2(run_dir / "adapter_model.safetensors", staging / "adapter_model.safetensors")
            config = json.loads((run_dir / "adapter_config.json").read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = first["base_model_name_or_path"]
            atomic_write_json(staging / "adapter_config.json", config)
            staging.rename(copy)
        entries.append({"path": str(copy)})
    combine_loras(LoraCombineConfig(method="lora_combine", adapters=entries, mode="concat"), out, overwrite=True,
                  reporter=reporter)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                 "chat_template.jinja"):
        if (run_dirs[-1] / name).is_file():
            shutil.copy2(run_dirs[-1] / name, out / name)
    meta = read_run_meta(run_dirs[0])
    last = read_run_meta(run_dirs[-1])
    atomic_write_json(out / RUN_META, {**last, "base_model": meta["base_model"], "metrics": {},
                                       "progressive_lora": [str(d) for d in run_dirs]})
    return out


def merge_stages(run_dirs: list[Path], base_model: str, strategy, out: Path, reporter: Reporter) -> Path:
    """The stages so far merged over `base_model` (each a LoRA run, read as base + its update, or a full run)."""
    return merge(merge_config(run_dirs, base_model, strategy), out, overwrite=True, reporter=reporter).output


def merge_config(run_dirs: list[Path], base_model: str, strategy) -> MergeConfig:
    density = {"density": strategy.density} if strategy.density is not None else {}
    return MergeConfig(method=strategy.method, base_model=None if strategy.method == "linear" else base_model,
                       models=[{"model": str(d), "weight": strategy.weight, **density} for d in run_dirs],
                       parameters=strategy.parameters, dtype=strategy.dtype, max_shard_size="20GB",
                       tokenizer_source=str(run_dirs[-1]))
