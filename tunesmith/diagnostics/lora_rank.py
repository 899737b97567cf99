"""How much of its rank a trained LoRA adapter uses: per-layer SVD of the learned update ΔW = B·A·scaling,
the energy captured at each rank, the effective rank, and a suggested `r`.

Read straight from the adapter's safetensors (no model is loaded). PEFT has no such analysis, so it is written
here; the scaling follows PEFT's own rules (alpha / r, alpha / √r for rsLoRA, rank_pattern / alpha_pattern).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ConfigError

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# "base_model.model.<module>.lora_A.weight" (the adapter name is dropped on save; tolerated when present);
# embeddings use lora_embedding_A / lora_embedding_B.
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?:embedding_)?(?P<ab>[AB])(?:\.[^.]+)?"
                  r"(?:\.weight)?$")
_LAYER = re.compile(r"\.(\d+)\.")


@dataclass
class LayerRank:
    module: str
    r: int
    scaling: float
    singular_values: list[float]  # of ΔW = B·A·scaling, largest first (at most r of them)
    energy: list[float]           # energy[k-1]: share of ‖ΔW‖²_F captured by the top k directions
    effective_rank: float         # exp(entropy of σ/Σσ) (Roy & Vetterli, 2007): 1 for rank one, r when all equal
    rank_at_threshold: int        # smallest k with energy ≥ threshold
    norm: float                   # ‖ΔW‖_F

    @property
    def layer(self) -> int | None:
        found = _LAYER.findall(f".{self.module}.")
        return int(found[-1]) if found else None

    @property
    def kind(self) -> str:  # q_proj, down_proj, ...
        return self.module.rsplit(".", 1)[-1]


@dataclass
class RankAnalysis:
    adapter: str
    threshold: float
    r: int                      # the configured rank (the largest one, with a rank_pattern)
    suggested_rank: int
    advice: str
    layers: list[LayerRank] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "layers"},
                "layers": [{**asdict(layer), "layer": layer.layer} for layer in self.layers]}


def update_singular_values(B: torch.Tensor, A: torch.Tensor, scaling: float) -> torch.Tensor:
    """Singular values of B·A·scaling without forming the (out × in) matrix: with B = Q_B R_B and Aᵀ = Q_A R_A,
    B·A = Q_B (R_B R_Aᵀ) Q_Aᵀ, so they are those of the small r × r matrix R_B R_Aᵀ (exact, and cheap for
    layers of any width)."""
    B, A = B.double(), A.double()
    _, r_b = torch.linalg.qr(B)
    _, r_a = torch.linalg.qr(A.T)
    return torch.linalg.svdvals(r_b @ r_a.T) * abs(scaling)


def energy_profile(sigma: torch.Tensor) -> list[float]:
    power = sigma.double() ** 2
    total = float(power.sum())
    return [float(v) / total for v in torch.cumsum(power, 0)] if total > 0 else [0.0] * len(sigma)


def effective_rank(sigma: torch.Tensor) -> float:
    total = float(sigma.sum())
    if total <= 0:
        return 0.0
    p = sigma.double() / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def rank_at(energy: list[float], threshold: float) -> int:
    for k, captured in enumerate(energy, start=1):
        if captured >= threshold - 1e-12:
            return k
    return len(energy)


def _scaling(config: dict, module: str, r: int) -> float:
    from peft.utils.other import get_pattern_key

    alphas = config.get("alpha_pattern") or {}
    alpha = alphas.get(get_pattern_key(alphas.keys(), module), config.get("lora_alpha", r))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _adapter_files(path: Path) -> tuple[Path, Path]:
    config, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not config.is_file() or not weights.is_file():
        what = "a full fine-tune (no adapter)" if (path / "model.safetensors").is_file() else "no LoRA adapter"
        raise ConfigError(f"this folder holds {what}: analyze needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}",
                          where=str(path), hint="pass a run (or checkpoint) trained with lora, qlora, dora, "
                                                "rslora, loraplus or pissa/olora")
    return config, weights


def analyze_adapter(path: str | Path, threshold: float = 0.9) -> RankAnalysis:
    """Per-module SVD of a saved LoRA adapter (a run folder or a checkpoint folder)."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}", where="--threshold")
    path = Path(path)
    config_file, weights_file = _adapter_files(path)
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ConfigError(f"the adapter is {config.get('peft_type')}, not LoRA: its update is not a product B·A",
                          where=str(config_file), hint="analyze covers lora, qlora, dora, rslora, loraplus and "
                                                       "pissa/olora runs")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(weights_file), framework="pt") as handle:
        for key in handle.keys():
            match = _KEY.match(key)
            if match:
                pairs.setdefault(match["module"], {})[match["ab"]] = handle.get_tensor(key)
    layers = []
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"module {module} has lora_{'A' if 'B' in ab else 'B'} without its partner",
                              where=str(weights_file))
        A, B = ab["A"], ab["B"]
        # (Embedding LoRA: A is (r, vocab), B (dim, r), so B·A is ΔWᵀ, with the same singular values.)
        if A.dim() != 2 or B.dim() != 2:  # conv LoRA: flatten the kernel into the input dimension
            A, B = A.flatten(1), B.flatten(1)
        r = A.shape[0]
        scaling = _scaling(config, module, r)
        sigma = update_singular_values(B, A, scaling)
        energy = energy_profile(sigma)
        layers.append(LayerRank(module, r, scaling, [float(s) for s in sigma], energy, effective_rank(sigma),
                                rank_at(energy, threshold), float(sigma.pow(2).sum().sqrt())))
    if not layers:
        raise ConfigError("no lora_A / lora_B weights found in the adapter", where=str(weights_file))
    layers.sort(key=lambda item: (item.layer if item.layer is not None else -1, item.module))
    r = max(layer.r for layer in layers)
    suggested, advice = suggest_rank(layers, r, threshold)
    return RankAnalysis(str(path), threshold, r, suggested, advice, layers)


def suggest_rank(layers: list[LayerRank], r: int, threshold: float) -> tuple[int, str]:
    """The smallest power of two that captures `threshold` of the update's energy in 90% of the layers
    (weighted alike), capped at r; and what it means for the next run."""
    trained = [layer for layer in layers if layer.norm > 0]
    if not trained:
        return r, "the update is zero in every layer: the adapter did not train (check the learning rate and data)"
    needed = sorted(layer.rank_at_threshold for layer in trained)
    p90 = needed[min(len(needed) - 1, math.ceil(0.9 * len(needed)) - 1)]
    suggested = min(r, 1 << (p90 - 1).bit_length())
    share = f"{100 * threshold:.0f}%"
    if p90 >= max(r - r // 8, 1):
        return suggested, (f"90% of layers need (nearly) all {r} directions to reach {share} of their update: the "
                           f"adapter uses its whole rank, so a larger r (e.g. {2 * r}) may learn more")
    if suggested < r:
        return suggested, (f"r={suggested} captures {share} of the update in 90% of layers: r={r} could be lowered "
                           f"to {suggested} (fewer parameters, similar update), or kept if quality matters most")
    return suggested, f"r={r} fits: the update spreads over most of its directions"


def plot_rank_analysis(analysis: RankAnalysis, path: Path) -> None:
    """Left: cumulative energy against rank for every module (median and spread); right: effective rank and the
    rank reaching the threshold, per layer and module kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    r = analysis.r
    ranks = list(range(1, r + 1))
    padded = [layer.energy + [1.0] * (r - len(layer.energy)) for layer in analysis.layers]
    for curve in padded:
        left.plot(ranks, curve, color="tab:blue", alpha=0.12, lw=0.8)
    median = torch.tensor(padded).median(0).values.tolist()
    left.plot(ranks, median, color="tab:blue", lw=2.2, label="median over modules")
    left.axhline(analysis.threshold, color="gray", ls="--", lw=1, label=f"{100 * analysis.threshold:.0f}% energy")
    left.axvline(analysis.suggested_rank, color="tab:red", ls=":", lw=1.5,
                 label=f"suggested r={analysis.suggested_rank}")
    left.set(xlabel="rank k", ylabel="energy captured by the top k directions", ylim=(0, 1.02),
             title="energy of the LoRA update ΔW = B·A·scaling")
    left.legend(fontsize=8, loc="lower right")
    kinds = sorted({layer.kind for layer in analysis.layers})
    for i, kind in enumerate(kinds):
        chosen = [layer for layer in analysis.layers if layer.kind == kind]
        xs = [layer.layer if layer.layer is not None else j for j, layer in enumerate(chosen)]
        right.plot(xs, [layer.effective_rank for layer in chosen], marker="o", ms=3, lw=1,
                   color=f"C{i % 10}", label=kind)
        right.plot(xs, [layer.rank_at_threshold for layer in chosen], marker="x", ms=4, lw=0, color=f"C{i % 10}")
    right.axhline(r, color="gray", ls="--", lw=1)
    right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    right.set(xlabel="layer", ylabel="rank", ylim=(0, r + 1),
              title=f"effective rank (lines) and rank for {100 * analysis.threshold:.0f}% energy (x)")
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(analysis: RankAnalysis) -> str:
    share = f"{100 * analysis.threshold:.0f}%"
    head = (f"| module | r | ‖ΔW‖ | effective rank | rank for {share} | energy at r/4 | energy at r/2 |\n"
            "|---|---|---|---|---|---|---|")
    rows = []
    for layer in analysis.layers:
        quarter, half = max(layer.r // 4, 1), max(layer.r // 2, 1)
        rows.append(f"| {layer.module} | {layer.r} | {layer.norm:.4g} | {layer.effective_rank:.2f} | "
                    f"{layer.rank_at_threshold} | {layer.energy[quarter - 1]:.3f} | {layer.energy[half - 1]:.3f} |")
    return "\n".join([head, *rows])
