"""The curve doctor: pure functions over metric series that recognise the common ways training goes wrong.

A series is a list of (step, value) in step order. Each detector returns a list of Findings (empty when the
curve looks healthy). Thresholds are deliberately conservative: ordinary minibatch noise on a falling loss
must stay quiet, so that a finding is worth reading.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from .findings import Finding, sort_findings

Series = Sequence[tuple[int, float]]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _mad(values: Sequence[float]) -> float:
    m = _median(values)
    return _median([abs(v - m) for v in values])


def detect_nonfinite(series: Series, name: str = "loss") -> list[Finding]:
    for step, value in series:
        if not math.isfinite(value):
            return [Finding("nonfinite", "error", step, f"{name} became {value} (training diverged)",
                            "lower the learning rate (e.g. ÷10), keep max_grad_norm at 1.0 or lower, use bf16 "
                            "rather than fp16, and check the data for empty or extremely long samples")]
    return []


def detect_spikes(series: Series, *, window: int = 10, threshold: float = 6.0, min_rise: float = 0.25
                  ) -> list[Finding]:
    """A value far above the recent ones: above median + threshold·MAD of the previous `window` values and at
    least `min_rise` (25%) above that median."""
    values = [v for _, v in series]
    spikes = []
    for i in range(window, len(values)):
        recent = [v for v in values[i - window:i] if math.isfinite(v)]
        if len(recent) < window // 2 or not math.isfinite(values[i]):
            continue
        med, mad = _median(recent), _mad(recent)
        if values[i] > med + threshold * max(mad, 1e-3 * abs(med)) and values[i] > med * (1 + min_rise):
            spikes.append(series[i][0])
    if not spikes:
        return []
    shown = ", ".join(map(str, spikes[:5])) + (" …" if len(spikes) > 5 else "")
    return [Finding("spike", "warning", spikes[0], f"{len(spikes)} loss spike(s) at step {shown}",
                    "the learning rate is probably too high for this batch size: lower it (÷2 to ÷5), add "
                    "warmup (training.warmup_ratio 0.05-0.1), or lower max_grad_norm; a spike that repeats "
                    "at the same data may come from a broken or very long sample")]


def detect_oscillation(series: Series, *, min_points: int = 12, rel_amplitude: float = 0.15,
                       min_sign_changes: float = 0.6) -> list[Finding]:
    """The second half of the curve swings up and down instead of settling: each value is far from the mean of
    its two neighbours (the median distance ≥ 15% of the level; a steady trend, straight or gently curved, has
    none) and successive changes keep flipping direction, while the loss no longer falls (a curve still falling
    by over 10% across the second half is learning, whatever its zigzag: batches of different kinds alternate).

    The median makes one spike, which `detect_spikes` reports, not read as oscillation; minibatch noise alone
    flips direction about 2/3 of the time, so the swing is what tells oscillation apart from noise (noise of
    standard deviation σ gives a median swing of about 0.83σ)."""
    values = [v for _, v in series if math.isfinite(v)]
    if len(values) < min_points:
        return []
    tail = values[len(values) // 2:]
    level = abs(sum(tail) / len(tail))
    k = max(len(tail) // 3, 1)
    if level and (sum(tail[:k]) - sum(tail[-k:])) / k / level > 0.1:
        return []
    amplitude = _median([abs(b - (a + c) / 2) for a, b, c in zip(tail, tail[1:], tail[2:])])
    diffs = [b - a for a, b in zip(tail, tail[1:])]
    flips = sum((a > 0) != (b > 0) for a, b in zip(diffs, diffs[1:]) if a and b) / max(len(diffs) - 1, 1)
    if level and amplitude / level >= rel_amplitude and flips >= min_sign_changes:
        return [Finding("oscillation", "warning", series[len(series) // 2][0],
                        f"the loss oscillates (typical swing {100 * amplitude / level:.0f}% of its level) instead of "
                        f"settling",
                        "the learning rate is likely too high: lower it (÷2 to ÷10) or raise the effective batch "
                        "size (batch_size × grad_accum); a cosine schedule with warmup also helps")]
    return []


def detect_plateau(series: Series, *, min_points: int = 10, min_improvement: float = 0.05) -> list[Finding]:
    """The loss hardly falls over the whole run: the last quarter's mean is within 5% of the first quarter's."""
    values = [v for _, v in series if math.isfinite(v)]
    if len(values) < min_points:
        return []
    k = max(len(values) // 4, 2)
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    if first <= 0 or (first - last) / first >= min_improvement:
        return []
    return [Finding("plateau", "warning", series[0][0],
                    f"the loss barely moved ({first:.4g} → {last:.4g}, {100 * (first - last) / first:+.1f}%)",
                    "the learning rate may be too low (try ×3 to ×10; LoRA usually wants 1e-4 to 5e-4), or the "
                    "adapter too small (raise method.r or target all-linear modules); also check that the "
                    "labels are not all masked (tunesmith data preview)")]


def detect_overfitting(train: Series, validation: Series, *, min_rise: float = 0.02,
                       gap_ratio: float = 0.3) -> list[Finding]:
    """Validation loss rising after its best point while training loss keeps falling; and a large final
    train–validation gap (validation more than 30% above training)."""
    findings = []
    val = [(s, v) for s, v in validation if math.isfinite(v)]
    tr = [(s, v) for s, v in train if math.isfinite(v)]
    if len(val) >= 3:
        best_i = min(range(len(val)), key=lambda i: val[i][1])
        best_step, best = val[best_i]
        last_step, last = val[-1]
        after = [v for s, v in tr if s > best_step]
        before = [v for s, v in tr if s <= best_step]
        train_falls = bool(after and before) and _median(after[-3:]) < _median(before[-3:])
        if best_i <= len(val) - 2 and last > best * (1 + min_rise) and train_falls:
            findings.append(Finding(
                "overfitting", "warning", best_step,
                f"validation loss rose from {best:.4g} (step {best_step}) to {last:.4g} (step {last_step}) "
                f"while training loss kept falling",
                f"the model is memorising the training data: keep the checkpoint near step {best_step} "
                f"(training.early_stopping_patience), train fewer epochs, add data, or regularise "
                f"(method.dropout 0.05-0.1, a smaller method.r, weight_decay)"))
    if val and tr:
        final_train = _median([v for _, v in tr[-5:]])
        final_val = val[-1][1]
        if final_train > 0 and final_val > final_train * (1 + gap_ratio) and not findings:
            findings.append(Finding(
                "generalization_gap", "info", val[-1][0],
                f"validation loss {final_val:.4g} is {100 * (final_val / final_train - 1):.0f}% above training "
                f"loss {final_train:.4g}",
                "the model fits the training data better than unseen data; if validation loss is still "
                "falling this is fine, otherwise use more or more varied data, or stop earlier"))
    return findings


def detect_grad_health(grad_norms: Series, *, max_grad_norm: float | None = None, explode_factor: float = 10.0,
                       vanish_below: float = 1e-6) -> list[Finding]:
    """Gradient norms: non-finite, exploding (10× the running median), vanishing (≈0 while training), or
    clipped at nearly every step."""
    findings = detect_nonfinite(grad_norms, "gradient norm")
    values = [(s, v) for s, v in grad_norms if math.isfinite(v)]
    if len(values) < 5:
        return findings
    for i in range(5, len(values)):
        med = _median([v for _, v in values[:i]])
        if med > 0 and values[i][1] > explode_factor * med:
            findings.append(Finding("grad_explosion", "warning", values[i][0],
                                    f"gradient norm jumped to {values[i][1]:.3g} ({values[i][1] / med:.0f}× its "
                                    f"median {med:.3g})",
                                    "lower the learning rate, keep gradient clipping on (max_grad_norm 1.0 or "
                                    "0.3 for QLoRA), and add warmup"))
            break
    tail = [v for _, v in values[len(values) // 2:]]
    if _median(tail) < vanish_below:
        findings.append(Finding("grad_vanishing", "warning", values[len(values) // 2][0],
                                f"gradient norm is vanishingly small (median {_median(tail):.2g})",
                                "nothing is being learnt: check that trainable parameters exist and receive "
                                "gradient (supervised tokens present, adapter attached), or raise the "
                                "learning rate"))
    if max_grad_norm:
        clipped = sum(v > max_grad_norm for _, v in values) / len(values)
        if clipped >= 0.9 and len(values) >= 10:
            findings.append(Finding("grad_clipped", "info", values[0][0],
                                    f"gradients were clipped at {100 * clipped:.0f}% of logged steps "
                                    f"(norm above max_grad_norm {max_grad_norm})",
                                    "clipping at almost every step makes the update size fixed: usually harmless "
                                    "early on, but if it lasts, the learning rate may be too high"))
    return findings


# A loss within 2% of ln(vocabulary) is a uniform guess over the vocabulary: what a collapsed model predicts.
UNIFORM_MARGIN = 0.98
# "Healthy" before it: clearly below the uniform guess at some logged step.
HEALTHY_SHARE = 0.9
# Gradients this small after having been healthy: nothing flows back any more.
DEAD_GRADIENT = 1e-8
# Logged steps in a row that make it a collapse. Tiny models at high learning rates pass above the uniform level for
# three logged steps and recover (OLoRA on stories260K at 5e-3); a collapsed one stays there.
COLLAPSE_LASTING = 5


def relative_to_uniform(loss: float, vocab_size: int | None) -> float | None:
    """A loss as a share of ln(vocabulary), the loss of a uniform guess over the tokens (None: unknown vocabulary)."""
    return loss / math.log(vocab_size) if vocab_size and vocab_size > 1 else None


def detect_collapse(loss: Series, grad_norms: Series, vocab_size: int | None, *, lasting: int = COLLAPSE_LASTING
                    ) -> list[Finding]:
    """Collapse: after the loss was clearly below ln(vocabulary) (a uniform guess over the tokens), it stayed at or
    above it for `lasting` logged steps in a row, or the gradients died (≈0 for `lasting` logged steps after being
    healthy). Typical of a learning rate far too high: the weights blow up, the outputs saturate, and no gradient
    flows back; the loss then stays flat, and a plateau detector would wrongly advise a higher learning rate. A
    single value above it that recovers is a spike (`detect_spikes`), not a collapse."""
    advice = ("the learning rate is far too high for this method: lower it ÷10 to ÷100 (LoRA usually trains at 1e-4 "
              "to 5e-4, full fine-tuning at 1e-5 to 5e-5), keep max_grad_norm at 1.0 or lower, and add warmup")
    if vocab_size and vocab_size > 1:
        uniform = math.log(vocab_size)
        step = _lasting_after(loss, lambda v: v < HEALTHY_SHARE * uniform, lambda v: v >= UNIFORM_MARGIN * uniform,
                              lasting)
        if step is not None:
            value = dict(loss)[step]
            return [Finding("collapse", "error", step,
                            f"the loss stayed at or above the level of a uniform guess over the {vocab_size:,}-token "
                            f"vocabulary (ln {vocab_size:,} = {uniform:.4g}) for {lasting} logged steps (last "
                            f"{value:.4g}): the model collapsed", advice)]
    step = _lasting_after(grad_norms, lambda v: v > 1e3 * DEAD_GRADIENT, lambda v: v < DEAD_GRADIENT, lasting)
    if step is not None:
        return [Finding("collapse", "error", step, f"the gradient norm stayed below {DEAD_GRADIENT:g} for {lasting} "
                                                   f"logged steps after being healthy: nothing flows back any more "
                                                   f"(the model collapsed)", advice)]
    return []


def _lasting_after(series: Series, healthy, bad, lasting: int) -> int | None:
    """The step at which `bad` values have lasted `lasting` points in a row after a `healthy` one; None if never
    (or if a value is not finite: the nonfinite detector speaks for it)."""
    seen_healthy, run = False, 0
    for step, value in series:
        if not math.isfinite(value):
            return None
        run = run + 1 if seen_healthy and bad(value) else 0
        if run >= lasting:
            return step
        seen_healthy = seen_healthy or healthy(value)
    return None


def series_from_records(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(r.get("step", i)), float(r[key])) for i, r in enumerate(records)
            if isinstance(r.get(key), (int, float))]


def diagnose(records: list[dict], *, max_grad_norm: float | None = None,
             vocab_size: int | None = None) -> list[Finding]:
    """Every detector over the metrics of a run (the lines of metrics.jsonl). After a collapse the flat loss and
    dead gradients are its symptoms, not a plateau or a too-low learning rate: those findings are left out."""
    loss = series_from_records(records, "loss")
    # A collapse is the cross-entropy at a uniform guess: the task's part of the loss where retain adds penalties.
    collapse = detect_collapse(series_from_records(records, "loss_task") or loss,
                               series_from_records(records, "grad_norm"), vocab_size)
    findings = detect_nonfinite(loss) + detect_nonfinite(series_from_records(records, "eval_loss"), "eval_loss")
    findings += collapse + detect_spikes(loss) + detect_oscillation(loss)
    findings += [] if collapse else detect_plateau(loss)
    findings += detect_overfitting(loss, series_from_records(records, "eval_loss"))
    findings += [f for f in detect_grad_health(series_from_records(records, "grad_norm"),
                                               max_grad_norm=max_grad_norm)
                 if (f.code != "nonfinite" or not any(g.code == "nonfinite" for g in findings))
                 and not (collapse and f.code == "grad_vanishing")]
    return sort_findings(findings)
