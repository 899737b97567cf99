"""Before a merge: how the task vectors relate, and which merge (if any) that suggests.

A task vector is what fine-tuning added to the base: for a LoRA adapter the dense update s·B·A of each target module
(computed module by module in float32, so memory holds one module's update per model, never a whole model's), for
a full checkpoint its weights minus the base's. Per task vector, tensor by tensor:

- sign conflict: each vector is trimmed as TIES trims it (the `density` share of largest magnitudes kept per
  tensor); of the coordinates where two or more trimmed vectors are non-zero, the share whose signs are not all
  equal. `chance` is what independent random signs would give on the same coordinates (1 − 2^(1−m) where m
  vectors overlap: 0.5 for two), so conflict near chance means unrelated tasks, below it agreeing ones, above it
  tasks that pull against each other;
- cosine between every pair of vectors, over the whole model and per transformer block;
- magnitude ratio: each vector's norm over the median of the vectors' norms, whole and per block.

`recommend` turns these into a method (or "keep apart": serve per-task adapters, docs/multitask.md); its
thresholds are the constants below, each with its reason. benchmarks/multitask.py measures what they predict.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, ModelError
from .config import AnyMergeConfig, LoraCombineConfig, LoraToBaseConfig, source_labels
from .methods.ties import trim
from .schedule import layer_index

# TIES' default trim (Yadav et al. 2023 keep the top 20% of each task vector).
DEFAULT_DENSITY = 0.2
# Two vectors with cosine below this point partly in opposite directions: any merge subtracts one task from the
# other (task arithmetic uses exactly that to *remove* a behaviour), so they are kept apart.
OPPOSED_COSINE = -0.1
# Above this, tasks share a direction (fine-tunes of one base on unrelated tasks sit near 0: Ilharco et al. 2023
# report cosines mostly under 0.05), so averaging them (linear, a model soup) loses little of each.
SIMILAR_COSINE = 0.1
# Conflict at most this share of chance: the tasks agree on most coordinates they both rely on, so summing or
# averaging them needs no sign election.
LOW_CONFLICT_OF_CHANCE = 0.5
# Conflict this far above chance: signs disagree more often than unrelated tasks would, i.e. the tasks pull the same
# weights apart; TIES' election would then drop one task's update on most shared coordinates.
HIGH_CONFLICT_OVER_CHANCE = 0.1
# A vector this many times the median norm (or under its inverse) dominates: it wins TIES' sign elections on the
# shared coordinates and most of an average, so the smaller task is largely lost.
UNEQUAL_MAGNITUDE = 3.0

_OTHER = "other"  # tensors outside the transformer blocks (embeddings, final norm, head)


@dataclass
class _Counts:
    """Running sums for one group of tensors (a block, or the whole model)."""

    gram: torch.Tensor  # n × n dot products (float64); the diagonal holds the squared norms
    kept: int = 0  # coordinates where at least one trimmed vector is non-zero
    overlap: int = 0  # ... where two or more are
    conflict: int = 0  # ... of those, signs not all equal
    chance: float = 0.0  # expected conflicts with independent random signs on the same overlaps

    def add(self, deltas: list[torch.Tensor], density: float) -> None:
        flat = torch.stack([d.reshape(-1) for d in deltas])  # n × size, float32
        self.gram += (flat.double() @ flat.double().T) if flat.shape[1] < 2_000_000 else _chunked_gram(flat)
        trimmed = torch.stack([trim(row.clone(), density) for row in flat])
        nonzero = (trimmed != 0).sum(0)
        positive = (trimmed > 0).sum(0)
        shared = nonzero >= 2
        self.kept += int((nonzero > 0).sum())
        self.overlap += int(shared.sum())
        self.conflict += int((shared & (positive != 0) & (positive != nonzero)).sum())
        m = nonzero[shared].double()
        self.chance += float((1 - torch.pow(2.0, 1 - m)).sum())


def _chunked_gram(flat: torch.Tensor) -> torch.Tensor:
    """The Gram matrix in float64 without a float64 copy of a large tensor (embeddings)."""
    gram = torch.zeros(flat.shape[0], flat.shape[0], dtype=torch.float64)
    for start in range(0, flat.shape[1], 1_000_000):
        part = flat[:, start:start + 1_000_000].double()
        gram += part @ part.T
    return gram


@dataclass
class GroupStats:
    """One block's (or the whole model's) figures; task order is `Diagnosis.labels`."""

    name: str
    cosine: list[list[float]]  # n × n
    norms: list[float]
    ratios: list[float]  # norm / median norm (1.0 where the median is 0)
    conflict: float  # share of overlapping coordinates whose signs disagree (0 when none overlap)
    chance: float  # the same share under independent random signs
    overlap: float  # share of kept coordinates where ≥ 2 vectors are non-zero


@dataclass
class Recommendation:
    method: str  # linear | task_arithmetic | ties | keep_apart
    reason: str


@dataclass
class Diagnosis:
    labels: list[str]
    density: float
    whole: GroupStats
    layers: list[GroupStats] = field(default_factory=list)  # per block, in depth order, then "other" if any
    recommendation: Recommendation | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _stats(name: str, counts: _Counts) -> GroupStats:
    gram = counts.gram
    norms = gram.diagonal().clamp_min(0).sqrt()
    outer = norms[:, None] * norms[None, :]
    cosine = torch.where(outer > 0, gram / outer.clamp_min(1e-300), torch.zeros_like(gram))
    median = statistics.median(norms.tolist())
    ratios = [n / median if median > 0 else 1.0 for n in norms.tolist()]
    overlap = counts.overlap
    return GroupStats(name, cosine.tolist(), norms.tolist(), ratios,
                      counts.conflict / overlap if overlap else 0.0, counts.chance / overlap if overlap else 0.0,
                      overlap / counts.kept if counts.kept else 0.0)


def diagnose_vectors(labels: list[str], tensors, density: float = DEFAULT_DENSITY) -> Diagnosis:
    """`tensors`: (tensor name, [one float32 delta per task]) pairs, any number, one at a time."""
    if len(labels) < 2:
        raise ConfigError(f"a diagnosis compares two or more task vectors, got {len(labels)}", where="models")
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density}", where="density")
    n = len(labels)
    whole = _Counts(torch.zeros(n, n, dtype=torch.float64))
    groups: dict[int | None, _Counts] = {}
    for _name, deltas in tensors:
        if len(deltas) != n:
            raise ValueError(f"{len(deltas)} deltas for {n} task vectors")
        group = groups.setdefault(layer_index(_name), _Counts(torch.zeros(n, n, dtype=torch.float64)))
        whole.add(deltas, density)
        group.add(deltas, density)
    order = sorted((k for k in groups if k is not None)) + ([None] if None in groups else [])
    layers = [_stats(_OTHER if k is None else f"layer {k}", groups[k]) for k in order]
    diagnosis = Diagnosis(labels, density, _stats("whole", whole), layers)
    diagnosis.recommendation = recommend(diagnosis)
    return diagnosis


def recommend(diagnosis: Diagnosis) -> Recommendation:
    """The rule the module docstring describes, checked in this order: opposed, unequal, conflicting, agreeing."""
    w, labels = diagnosis.whole, diagnosis.labels
    pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))]
    low_i, low_j = min(pairs, key=lambda p: w.cosine[p[0]][p[1]])
    lowest = w.cosine[low_i][low_j]
    if lowest <= OPPOSED_COSINE:
        return Recommendation("keep_apart", f"{labels[low_i]} and {labels[low_j]} point in opposite directions "
                                            f"(cosine {lowest:.2f} ≤ {OPPOSED_COSINE}): a merge cancels part of both")
    big = max(range(len(labels)), key=lambda i: max(w.ratios[i], 1 / w.ratios[i] if w.ratios[i] > 0 else 1e9))
    spread = max(w.ratios[big], 1 / w.ratios[big] if w.ratios[big] > 0 else float("inf"))
    if spread >= UNEQUAL_MAGNITUDE:
        return Recommendation("keep_apart", f"{labels[big]}'s task vector is {w.ratios[big]:.2g}x the median norm "
                                            f"(≥ {UNEQUAL_MAGNITUDE:g}x apart): the larger one would dominate the "
                                            "merge")
    if w.conflict >= w.chance + HIGH_CONFLICT_OVER_CHANCE:
        return Recommendation("keep_apart", f"signs conflict on {w.conflict:.0%} of shared coordinates, above the "
                                            f"{w.chance:.0%} unrelated tasks give: the tasks pull the same weights "
                                            "apart")
    if w.conflict <= LOW_CONFLICT_OF_CHANCE * w.chance or w.overlap == 0:
        if all(w.cosine[i][j] > SIMILAR_COSINE for i, j in pairs):
            return Recommendation("linear", f"the tasks agree (conflict {w.conflict:.0%}, chance {w.chance:.0%}; "
                                            f"cosine ≥ {min(w.cosine[i][j] for i, j in pairs):.2f}): an average "
                                            "keeps what they share")
        return Recommendation("task_arithmetic", f"nearly orthogonal with little conflict (conflict "
                                                 f"{w.conflict:.0%}, chance {w.chance:.0%}; cosine ≥ {lowest:.2f}): "
                                                 "summing keeps each task's update whole")
    return Recommendation("ties", f"signs conflict on {w.conflict:.0%} of shared coordinates (chance "
                                  f"{w.chance:.0%}): TIES' sign election (or dare_ties) resolves that, an average "
                                  "would blur it")


# ------------------------------------------------------------------ task vectors from a merge config


def lora_deltas(folder: str | Path) -> dict[str, torch.Tensor | object]:
    """A LoRA adapter's update per base tensor name, each computed when read (float32; `.materialize()`)."""
    from .adapters import read_adapter

    adapter = read_adapter(folder)
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out"))
    return {f"{module}.weight": _LoraDelta(lora, fan_in_fan_out) for module, lora in adapter.modules.items()}


@dataclass
class _LoraDelta:
    lora: object
    fan_in_fan_out: bool

    def materialize(self) -> torch.Tensor:
        return self.lora.delta(self.fan_in_fan_out, torch.float32)


def lora_delta(folder: str | Path, tensor: str) -> torch.Tensor:
    """The dense update s·B·A an adapter makes to one base tensor (float32)."""
    deltas = lora_deltas(folder)
    if tensor not in deltas:
        raise ModelError(f"the adapter does not change '{tensor}'", where=str(folder))
    return deltas[tensor].materialize()


def _sources(config: AnyMergeConfig) -> tuple[list[str], list[str], str | None]:
    """Labels, folders and the base model a config names."""
    if isinstance(config, LoraToBaseConfig):
        raise ConfigError("lora_to_base folds one adapter; a diagnosis compares two or more task vectors",
                          where="method")
    if isinstance(config, LoraCombineConfig):
        folders = [a.path for a in config.adapters]
        base = None
    else:
        folders = [m.model for m in config.models]
        base = config.base_model
    return source_labels(folders), folders, base


def config_density(config: AnyMergeConfig) -> float:
    """The trim the config's own merge would use (the mean of its models' plain `density` values below 1, as TIES and
    DARE set them), else TIES' default."""
    values = [m.density for m in getattr(config, "models", [])
              if isinstance(m.density, (int, float)) and 0 < m.density < 1]
    return sum(values) / len(values) if values else DEFAULT_DENSITY


def diagnose(config: AnyMergeConfig, *, base: str | None = None, density: float | None = None) -> Diagnosis:
    """The diagnosis of the task vectors a merge config names. `base`: the model they are differences from when the
    config has no `base_model` (linear and slerp forbid one); LoRA adapters need none (their update is B·A).
    `density`: the share of each tensor's largest entries kept before counting conflicts (default:
    `config_density`)."""
    from .engine import open_checkpoint

    density = config_density(config) if density is None else density

    labels, folders, config_base = _sources(config)
    base = config_base or base
    if len(folders) < 2:
        raise ConfigError(f"a diagnosis compares two or more task vectors, the config names {len(folders)}",
                          where="models")
    is_lora = [(Path(f).expanduser() / "adapter_config.json").is_file() for f in folders]
    loras = {i: lora_deltas(f) for i, f in enumerate(folders) if is_lora[i]}
    full = {i: f for i, f in enumerate(folders) if not is_lora[i]}
    if full and not base:
        raise ConfigError("full models are diagnosed as differences from their base, and the config names none",
                          where="base_model", hint="pass --base MODEL (linear and slerp configs have no base_model)")
    base_ckpt = open_checkpoint(base, "base_model") if (full and base) else None
    checkpoints = {i: open_checkpoint(f, f"models[{i}]") for i, f in full.items()}
    try:
        if base_ckpt is not None:
            from .validate import check_compatible

            check_compatible([base_ckpt, *checkpoints.values()])
            names = [n for n, info in base_ckpt.tensors.items() if info.dtype.is_floating_point]
        else:
            names = list(dict.fromkeys(n for deltas in loras.values() for n in deltas))

        def tensors():
            for name in names:
                base_tensor = base_ckpt.read(name).float() if base_ckpt is not None else None
                deltas = []
                for i in range(len(folders)):
                    if i in loras:
                        lazy = loras[i].get(name)
                        delta = lazy.materialize() if lazy is not None else None
                    else:
                        delta = checkpoints[i].read(name).float() - base_tensor
                    deltas.append(delta)
                shape = next((d.shape for d in deltas if d is not None), None)
                if shape is None:
                    continue
                for i, delta in enumerate(deltas):
                    if delta is not None and delta.shape != shape:
                        raise ModelError(f"task vectors of '{name}' differ in shape", where=folders[i])
                yield name, [d if d is not None else torch.zeros(shape) for d in deltas]

        return diagnose_vectors(labels, tensors(), density)
    finally:
        for checkpoint in [base_ckpt, *checkpoints.values()]:
            if checkpoint is not None:
                checkpoint.close()


def summary_line(diagnosis: Diagnosis) -> str:
    """One line: the whole-model figures and the recommendation."""
    w = diagnosis.whole
    n = len(diagnosis.labels)
    cosines = [w.cosine[i][j] for i in range(n) for j in range(i + 1, n)]
    rec = diagnosis.recommendation
    return (f"sign conflict {w.conflict:.0%} (chance {w.chance:.0%}, top {diagnosis.density:.0%} kept), cosine "
            f"{min(cosines):.2f}..{max(cosines):.2f}, norm ratio {min(w.ratios):.2f}..{max(w.ratios):.2f} → "
            f"{rec.method}: {rec.reason}")


__all__ = ["Diagnosis", "GroupStats", "Recommendation", "config_density", "diagnose", "diagnose_vectors", "lora_delta", "recommend",
           "summary_line", "DEFAULT_DENSITY"]
