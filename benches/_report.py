"""The report every benchmark prints and appends to BENCHMARKS.md: a heading
naming the date, machine and build, then a table of ratios.

Run under load by ``python -m corral bench`` (``CORRAL_BENCH_LOAD`` set to
the number of busy processes), the heading says so and every case ends in
" (under load)", so that the idle and loaded rows of a case both stay in
BENCHMARKS.md and in the chart."""

from __future__ import annotations

import datetime
import os
import platform

import corral

#: Busy processes running beside this benchmark (``corral._bench.busy_load``).
LOAD = int(os.environ.get("CORRAL_BENCH_LOAD", "0") or 0)


def heading(title: str) -> str:
    """``### title — date, machine, cores, Python, corral build``."""
    build = "debug" if corral._core.DEBUG_BUILD else "release"
    load = f", under load ({LOAD} busy processes)" if LOAD else ""
    return (
        f"### {title} — {datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, corral {corral.__version__} ({build}){load}"
    )


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Markdown rows of (case, implementation, result, corral vs this)."""
    mark = " (under load)" if LOAD else ""
    return ["| case | implementation | result | corral vs this |", "|---|---|---|---|"] + [
        f"| {c}{mark} | {n} | {r} | {x} |" for c, n, r, x in rows
    ]


def emit(lines: list[str], markdown: str | None) -> None:
    """Prints the report and, if asked, appends it to ``markdown``."""
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    if markdown:
        with open(markdown, "a", encoding="utf-8") as f:
            f.write("\n" + report)
