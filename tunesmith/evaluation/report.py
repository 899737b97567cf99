"""Evaluation reports: Markdown and HTML with matplotlib plots (metrics before/after, confusion matrices),
and a side-by-side table of the same prompts answered by both models."""

from __future__ import annotations

import html
import math
from pathlib import Path

from ..io import atomic_write_text
from .forgetting import WARN_RATE

MAX_SAMPLES_SHOWN = 20
MAX_CELL_CHARS = 600  # long references and replies are cut in the report; results.json keeps them whole


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def plot_metrics(results: list[dict], path: Path) -> bool:
    """One panel per task: each metric's value per model (bars side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results[0]["tasks"])
    if not tasks:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    width = 0.8 / len(results)
    for ax, task in zip(axes[0], tasks):
        metrics = [m for m, v in results[0]["tasks"][task]["metrics"].items() if isinstance(v, (int, float))
                   and m not in ("loss",)]
        for k, result in enumerate(results):
            values = [result["tasks"].get(task, {}).get("metrics", {}).get(m, float("nan")) for m in metrics]
            xs = [i + (k - (len(results) - 1) / 2) * width for i in range(len(metrics))]
            bars = ax.bar(xs, values, width, label=result["model"])
            ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7, padding=1)
        ax.set_xticks(range(len(metrics)), metrics, rotation=30, ha="right", fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.margins(y=0.15)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_confusions(results: list[dict], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.8 * len(results), 3.4), squeeze=False)
    for ax, result in zip(axes[0], results):
        t = result["tasks"][task]
        matrix, cols = t["confusion_matrix"], t["matrix_columns"]
        ax.imshow(matrix, cmap="Blues")
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(matrix)), cols[:len(matrix)], fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{result['model']}: {task}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_cell(text) -> str:
    text = "" if text is None else str(text)
    return text.replace("|", "\\|").replace("\n", "<br>")


def _metric_table(results: list[dict], comparison: dict | None) -> tuple[list[str], list[list[str]]]:
    if comparison:
        head = ["task", "metric", comparison["base"], comparison["tuned"], "change"]
        body = [[r["task"], r["metric"] + (" ★" if r["headline"] else ""), _fmt(r["before"]), _fmt(r["after"]),
                 f"{r['delta']:+.4g} " + {True: "better", False: "worse", None: "same"}[r["improved"]]]
                for r in comparison["rows"]]
        return head, body
    head = ["task", "metric", results[0]["model"]]
    body = [[task, metric, _fmt(value)] for task, t in results[0]["tasks"].items()
            for metric, value in t["metrics"].items() if isinstance(value, (int, float))]
    return head, body


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS] + " …"


def _sample_rows(results: list[dict], task: str) -> tuple[list[str], list[list[str]]]:
    head = ["prompt", "reference"] + [r["model"] for r in results]
    rows = []
    samples = [r["tasks"][task].get("samples", []) for r in results]
    for i in range(min(MAX_SAMPLES_SHOWN, len(samples[0]))):
        cells = [_cut(samples[0][i]["prompt"]), _cut(samples[0][i].get("reference") or "")]
        for per_model in samples:
            s = per_model[i]
            text = _cut(s["reply"])
            if "predicted" in s:
                text += f"  → {s['predicted']}"
            if s.get("checks"):
                text += "  [" + ", ".join(f"{'✓' if ok else '✗'} {n}" for n, ok in s["checks"].items()) + "]"
            cells.append(text)
        rows.append(cells)
    return head, rows


def write_report(results: list[dict], out_dir: Path, comparison: dict | None = None) -> tuple[Path, Path]:
    """report.md and report.html (plus PNGs) in `out_dir`; `results` holds one model's results, or base and
    fine-tuned (in that order) with their `comparison`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    if plot_metrics(results, out_dir / "metrics.png"):
        images.append(("metrics before and after" if comparison else "metrics", "metrics.png"))
    for task, t in results[0]["tasks"].items():
        if t["type"] == "classification":
            plot_confusions(results, task, out_dir / f"confusion_{task}.png")
            images.append((f"confusion matrix: {task}", f"confusion_{task}.png"))
    title = (f"Evaluation: {comparison['tuned']} vs {comparison['base']}" if comparison
             else f"Evaluation: {results[0]['model']}")
    sections: list[tuple[str, list[str] | None, list[list[str]] | None, str | None]] = []
    sections.append(("Metrics", *_metric_table(results, comparison), "★ marks each task's headline metric."
                     if comparison else None))
    if comparison and comparison["forgetting"]:
        worst = max((r["rate"] for r in comparison["forgetting"] if math.isfinite(r["rate"])), default=0.0)
        note = ("Forgetting rate = relative loss of general ability (perplexity: its relative rise); "
                "negative = improved.")
        if worst > WARN_RATE:
            note += (f" Warning: the worst forgetting rate is {100 * worst:+.1f}%, above the {100 * WARN_RATE:.0f}% "
                     "target — mix general data into training, lower the learning rate or epochs, or use a smaller "
                     "rank.")
        sections.append(("Forgetting", ["general task", "metric", "before", "after", "forgetting rate"],
                         [[r["task"], r["metric"], _fmt(r["before"]), _fmt(r["after"]), f"{100 * r['rate']:+.1f}%"]
                          for r in comparison["forgetting"]], note))
    if comparison and comparison.get("head_to_head"):
        sections.append(("Head to head (judge)", ["task", "judge", "win rate", "wins / ties / losses", "unparsed",
                                                  "order consistency"],
                         [[r["task"], r["judge"], _fmt(r["win_rate"]), f"{r['wins']} / {r['ties']} / {r['losses']}",
                           str(r["unparsed"]), _fmt(r["consistency"])] for r in comparison["head_to_head"]],
                         "The judge saw each prompt's two replies twice, in both orders; win rate = the fine-tuned "
                         "model's mean verdict (1 better, 0.5 tie, 0 worse). Order consistency: the share of "
                         "prompts whose two verdicts agree (a judge that follows the position scores low)."))
    for task, t in results[0]["tasks"].items():
        if t.get("checks"):
            head = ["check"] + [r["model"] for r in results]
            body = [[name] + [_fmt(r["tasks"][task]["checks"].get(name, float("nan"))) for r in results]
                    for name in t["checks"]]
            sections.append((f"Instruction checks: {task} (pass rate)", head, body, None))
        if t.get("samples"):
            sections.append((f"Samples: {task}", *_sample_rows(results, task),
                             f"first {MAX_SAMPLES_SHOWN} shown; all are in the JSON results"
                             if len(t["samples"]) > MAX_SAMPLES_SHOWN else None))
    md, page = _markdown(title, sections, images), _html(title, sections, images)
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_text(out_dir / "report.html", page)
    return out_dir / "report.md", out_dir / "report.html"


def _markdown(title, sections, images) -> str:
    lines = [f"# {title}", ""]
    lines += [f"![{alt}]({src})" for alt, src in images] + [""]
    for heading, head, body, note in sections:
        lines += [f"## {heading}", ""]
        if note:
            lines += [note, ""]
        lines += ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body] + [""]
    return "\n".join(lines)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:1em 0;width:100%}td,th{border:1px solid #ccc;padding:4px 8px;"
          "vertical-align:top;white-space:pre-wrap;font-size:14px}th{background:#f3f3f3}img{max-width:100%}")


def _html(title, sections, images) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>"]
    parts += [f"<figure><img src='{esc(src)}' alt='{esc(alt)}'><figcaption>{esc(alt)}</figcaption></figure>"
              for alt, src in images]
    for heading, head, body, note in sections:
        parts.append(f"<h2>{esc(heading)}</h2>")
        if note:
            parts.append(f"<p>{esc(note)}</p>")
        parts.append("<table><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in body]
        parts.append("</table>")
    return "\n".join(parts) + "\n</body></html>\n"
