"""The Plan tab: the planner's view of the Build tab's config, as Markdown (what `tunesmith plan --config` prints).

Memory: the breakdown and predicted peak against this machine's memory; when it does not fit, the planner's
proposals of configurations that do (`planning.advice.propose`). Time: optional, measured by a few real steps
(`planning.time.probe_throughput`), scaled to the run's tokens.
"""

from __future__ import annotations

from ..errors import TunesmithError
from ..planning.units import human
from .build import validate


def plan_markdown(text: str, path: str, *, device: str | None = None, budget: int | None = None,
                  probe: bool = False) -> str:
    """The plan of the YAML `text` (to be saved as `path`). `budget`: bytes the run may use (default: this machine's
    free memory on `device`). `probe`: also time a few steps for a training-time estimate."""
    import torch

    from ..api import plan_model
    from ..planning.preflight import device_memory, request_from_config

    cfg, message = validate(text, path)
    if cfg is None:
        return f"```\n{message}\n```"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        request = request_from_config(cfg, device)
        plan, model_config = plan_model(cfg.model.name_or_path, request,
                                        trust_remote_code=cfg.model.trust_remote_code)
    except TunesmithError as exc:
        return f"```\nerror: {exc}\n```"
    available = budget if budget is not None else device_memory(device)
    lines = [*counts_lines(plan, cfg.model.name_or_path), "", *memory_lines(plan)]
    lines += [f"- note: {note}" for note in plan.notes]
    what = "the budget" if budget is not None else "GPU memory" if device == "cuda" else "available RAM"
    fits = plan.peak <= available
    lines += ["", f"**{'fits' if fits else 'does not fit'}**: predicted peak {human(plan.peak)}, {what} "
                  f"{human(available)}"]
    if not fits:
        lines += ["", *advice_lines(model_config, request, available)]
    if probe:
        lines += ["", *time_lines(cfg, model_config, request)]
    return "\n".join(lines)


def counts_lines(plan, model_name: str) -> list[str]:
    c = plan.counts
    share = f" ({100 * c.trainable / c.total:.4f}%)" if c.total else ""
    rows = [f"### {plan.request.method} on {model_name}", "", "| parameters | count |", "|---|---:|",
            f"| total | {c.total:,} |",
            f"| trainable | {(f'{c.trainable:,}' + share) if c.exact else 'unknown'} |"]
    if c.quantized:
        rows.append(f"| 4-bit quantised | {c.quantized:,} |")
    return rows


def memory_lines(plan) -> list[str]:
    r = plan.request
    title = (f"peak memory: batch {r.batch} x seq {r.seq}, grad accum {r.grad_accum}, "
             f"{'checkpointing' if r.gradient_checkpointing else 'no checkpointing'}, {plan.optimizer}, "
             f"{str(r.compute_dtype()).removeprefix('torch.')} on {r.device}")
    rows = [f"### {title}", "", "| component | memory |", "|---|---:|"]
    rows += [f"| {name} | {human(value)} |" for name, value in plan.components().items()]
    rows.append(f"| **predicted peak** ({plan.peak_phase}) | **{human(plan.peak)}** |")
    return rows


def advice_lines(model_config, request, budget: float) -> list[str]:
    from ..planning.advice import propose

    proposals = propose(model_config, request, budget)
    if not proposals:
        return [f"nothing fits {human(budget)}: even QLoRA with batch 1, checkpointing and a shorter sequence needs "
                f"more; use more devices or a smaller model"]
    rows = [f"### configurations that fit {human(budget)}, fastest first", "",
            "| # | method | rank | batch | seq | checkpointing | precision | predicted peak | why |",
            "|---:|---|---:|---:|---:|---|---|---:|---|"]
    for i, p in enumerate(proposals, 1):
        rows.append(f"| {i} | {p.method} | {p.rank or '-'} | {p.batch} | {p.seq} | "
                    f"{'yes' if p.gradient_checkpointing else 'no'} | {p.precision} | {human(p.peak)} | {p.reason} |")
    return rows


def run_tokens(cfg) -> tuple[float, str]:
    """An upper bound of the tokens the run trains on (every sample at data.max_length), and how it was counted."""
    t = cfg.training
    if t.max_steps:
        return (t.max_steps * t.batch_size * t.grad_accum * cfg.data.max_length,
                f"{t.max_steps} steps x batch {t.batch_size} x grad accum {t.grad_accum}")
    from ..data.dataset import load_samples

    samples = sum(len(load_samples(spec)) for spec in cfg.data.train)
    return samples * cfg.data.max_length * t.num_epochs, f"{samples:,} samples x {t.num_epochs:g} epochs"


def time_lines(cfg, model_config, request) -> list[str]:
    from ..planning.time import probe_throughput

    try:
        tokens, counted = run_tokens(cfg)
    except TunesmithError as exc:
        return [f"no time estimate: {exc}"]
    speed = probe_throughput(model_config, request)
    note = f"; {speed.note}" if speed.note else ""
    return [f"measured throughput: {speed.tokens_per_second:,.0f} tokens/s ({request.device}, batch {request.batch} "
            f"x seq {request.seq}, {speed.steps} timed steps){note}",
            f"estimated training time: at most {speed.seconds_for(tokens) / 60:.1f} min for {counted} "
            f"(at most {cfg.data.max_length} tokens a sample)"]
