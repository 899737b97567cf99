"""The data doctor's report as data: headline rows and findings by check (the CLI draws them), JSON for machines,
and HTML with charts."""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict

from ...io import atomic_write_text
from .run import Report

_HEADLINES = {
    "schema": ["records", "valid", "invalid", "formats"],
    "stats": ["prompt_chars", "response_chars", "tokens", "over_max_len", "multi_turn", "with_input"],
    "diversity": ["task_types", "distinct_2_instruction", "distinct_2_response", "verb_object_parsed",
                  "unique_verbs", "unique_verb_object_pairs", "top_verb_object_pairs"],
    "accuracy": ["flagged", "flagged_rate", "by_check"],
    "consistency": ["address", "punctuation_width", "numbered_list", "flagged"],
    "duplicates": ["exact", "near", "conflicting"],
    "preference": ["pairs", "identical", "swapped", "chosen_longer_share", "mean_chosen_units", "mean_rejected_units",
                   "length_ratio", "kto_examples", "desirable", "undesirable", "empty_sides"],
    "contamination": ["eval_prompts", "contaminated", "contaminated_rate"],
}


def _short(value, limit: int = 110) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def by_check(report: Report) -> dict[str, list]:
    grouped = defaultdict(list)
    for finding in report.findings:
        grouped[finding.check].append(finding)
    return dict(sorted(grouped.items(), key=lambda item: ("error warning info".split().index(item[1][0].severity),
                                                          item[0])))


def headline_rows(report: Report) -> list[tuple[str, str, str]]:
    """(section, metric, value) rows of each section's headline metrics; the section is named on its first row."""
    rows = []
    for name, section in report.sections.items():
        for key in _HEADLINES.get(name, []):
            if key in section.metrics:
                rows.append((name, key, _short(section.metrics[key])))
                name = ""
    return rows


def place(finding, file: str) -> str:
    """Where a finding is, said relative to the checked file."""
    if finding.line is None:
        return "(whole file)" if finding.file in (None, file) else finding.file
    text = f"line {finding.line}" if finding.file in (None, file) else f"{finding.file}:{finding.line}"
    return text + (f" ({finding.field})" if finding.field else "")


def write_json(report: Report, path: str, gate: list[str] | None = None) -> None:
    data = report.to_dict()
    data["gate"] = {"failed": bool(gate), "reasons": gate or []}
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def svg_chart(name: str, values, width: int = 560) -> str:
    """An inline SVG bar chart ({label: count}) or histogram (list of numbers).

    Drawn as SVG rather than with matplotlib so that the browser renders Chinese labels with its own fonts;
    matplotlib would need a CJK font installed on the machine that writes the report.
    """
    esc = html.escape
    if isinstance(values, dict):
        bars = [(str(k), float(v)) for k, v in values.items()]
    else:
        bars = _histogram(values)
    if not bars:
        return ""
    top = max(v for _, v in bars) or 1
    if isinstance(values, dict):
        row, label_w = 20, 150
        height = 30 + row * len(bars)
        body = [f"<text x='{label_w - 6}' y='{30 + i * row + 14}' text-anchor='end'>{esc(label[:24])}</text>"
                f"<rect x='{label_w}' y='{30 + i * row + 3}' width='{(width - label_w - 50) * v / top:.1f}' "
                f"height='{row - 6}' fill='#4c78a8'><title>{esc(label)}: {v:g}</title></rect>"
                f"<text x='{label_w + (width - label_w - 50) * v / top + 4:.1f}' y='{30 + i * row + 14}'>{v:g}</text>"
                for i, (label, v) in enumerate(bars)]
    else:
        height, plot_h, n = 230, 160, len(bars)
        bar_w = (width - 60) / n
        body = [f"<rect x='{50 + i * bar_w:.1f}' y='{30 + plot_h * (1 - v / top):.1f}' width='{max(bar_w - 1, 1):.1f}' "
                f"height='{plot_h * v / top:.1f}' fill='#4c78a8'><title>{esc(label)}: {v:g}</title></rect>"
                for i, (label, v) in enumerate(bars)]
        body.append(f"<text x='50' y='{height - 20}'>{esc(bars[0][0].split('–')[0])}</text>"
                    f"<text x='{width - 10}' y='{height - 20}' text-anchor='end'>{esc(bars[-1][0].split('–')[1])}"
                    f"</text><text x='45' y='38' text-anchor='end'>{top:g}</text>"
                    f"<line x1='50' y1='{30 + plot_h}' x2='{width - 10}' y2='{30 + plot_h}' stroke='#888'/>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='12' "
            f"font-family='sans-serif'><text x='10' y='18' font-weight='bold'>{esc(name)}</text>{''.join(body)}</svg>")


def _histogram(values: list[float], bins: int = 40) -> list[tuple[str, float]]:
    if not values:
        return []
    low, high = min(values), max(values)
    width = (high - low) / bins or 1
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    return [(f"{low + i * width:.0f}–{low + (i + 1) * width:.0f}", float(c)) for i, c in enumerate(counts)]


def write_html(report: Report, path: str, gate: list[str] | None = None, max_rows: int = 1000) -> None:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>data check: {esc(report.file)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top;text-align:left}"
             ".error{color:#b00}.warning{color:#a60}.info{color:#06a}.charts svg{margin:6px;border:1px solid #eee}</style></head><body>",
             f"<h1>data check</h1><p><code>{esc(report.file)}</code></p>"]
    if gate is not None:
        verdict = "<b class='error'>FAILED</b>: " + esc("; ".join(gate)) if gate else "<b>passed</b>"
        parts.append(f"<p>gate: {verdict}</p>")
    parts.append("<h2>summary</h2><table>" + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in report.summary.items()) + "</table>")
    parts.append("<h2>charts</h2><div class='charts'>")
    for section in report.sections.values():
        for name, values in section.charts.items():
            if values:
                parts.append(svg_chart(name, values))
    parts.append("</div>")
    for name, section in report.sections.items():
        parts.append(f"<h2>{esc(name)}</h2><table>" + "".join(
            f"<tr><th>{esc(k)}</th><td>{esc(_short(v, 400))}</td></tr>" for k, v in section.metrics.items())
            + "</table>")
    counts = Counter(f.check for f in report.findings)
    parts.append("<h2>findings</h2><table><tr><th>check</th><th>count</th></tr>" + "".join(
        f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in counts.most_common()) + "</table>")
    parts.append("<table><tr><th>where</th><th>check</th><th>severity</th><th>message</th></tr>")
    for finding in report.findings[:max_rows]:
        parts.append(f"<tr><td>{esc(finding.where())}</td><td>{esc(finding.check)}</td>"
                     f"<td class='{finding.severity}'>{finding.severity}</td><td>{esc(finding.message)}</td></tr>")
    parts.append("</table>")
    if len(report.findings) > max_rows:
        parts.append(f"<p>{len(report.findings) - max_rows} more findings in the JSON report.</p>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
