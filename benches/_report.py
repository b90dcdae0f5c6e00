"""The report every benchmark prints and appends to BENCHMARKS.md: a heading
naming the date, machine and build, then a table of ratios."""

from __future__ import annotations

import datetime
import os
import platform

import corral


def heading(title: str) -> str:
    """``### title — date, machine, cores, Python, corral build``."""
    build = "debug" if corral._core.DEBUG_BUILD else "release"
    return (
        f"### {title} — {datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, corral {corral.__version__} ({build})"
    )


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Markdown rows of (case, implementation, result, corral vs this)."""
    return ["| case | implementation | result | corral vs this |", "|---|---|---|---|"] + [
        f"| {c} | {n} | {r} | {x} |" for c, n, r, x in rows
    ]


def emit(lines: list[str], markdown: str | None) -> None:
    """Prints the report and, if asked, appends it to ``markdown``."""
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    if markdown:
        with open(markdown, "a", encoding="utf-8") as f:
            f.write("\n" + report)
