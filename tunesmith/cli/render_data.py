"""The data commands' console output, drawn with rich from what the library returns: the data doctor's report
(`tunesmith data check`) and the preview of trained and masked text (`tunesmith data preview`)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..data.doctor.report import by_check, headline_rows, place
from ..data.doctor.run import Report
from ..data.preview import PreviewBlock

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
TRAINED_STYLE, MASKED_STYLE = "bold green", "dim"


def print_check_report(report: Report, console: Console, show: int = 3) -> None:
    """The headline metrics, a table of findings by check, and the first `show` findings of each check."""
    console.rule(f"[bold]data check[/] {escape(report.file)}")
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("section")
    table.add_column("metric")
    table.add_column("value", overflow="fold")
    for section, metric, value in headline_rows(report):
        table.add_row(section, metric, escape(value))
    console.print(table)
    grouped = by_check(report)
    if not grouped:
        console.print("[green]no problems found[/]")
        return
    findings = Table(show_header=True, header_style="bold", title="findings")
    for column in ("check", "severity", "count", "first places"):
        findings.add_column(column, overflow="fold")
    for check, items in grouped.items():
        places = ", ".join(place(f, report.file) for f in items[:5]) + (" …" if len(items) > 5 else "")
        findings.add_row(check, f"[{SEVERITY_STYLE[items[0].severity]}]{items[0].severity}[/]", str(len(items)),
                         escape(places))
    console.print(findings)
    if show:
        for check, items in grouped.items():
            console.print(f"[bold]{check}[/]")
            for finding in items[:show]:
                console.print(f"  {escape(place(finding, report.file))}: {escape(finding.message)}", highlight=False)
            if len(items) > show:
                console.print(f"  … and {len(items) - show} more (see --json / --html)")


def preview_renderable(blocks: list[PreviewBlock]) -> Group:
    """Trained text bold green, masked text dim, each sample under its summary line."""
    legend = Text.assemble(("trained", TRAINED_STYLE), "  ", ("masked (prompt, not trained)", MASKED_STYLE))
    items = [legend]
    for block in blocks:
        items.append(Text(block.summary, style="bold"))
        if block.runs:
            items.append(Text.assemble(*((text, TRAINED_STYLE if trained else MASKED_STYLE)
                                         for text, trained in block.runs)))
    return Group(*items)
