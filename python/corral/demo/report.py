"""The demo's summary: one row per comparison, printed as a markdown table
and saved next to a chart of the ratios."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

COLUMNS = ("stage", "corral", "stdlib", "stdlib as run", "corral vs stdlib", "note")


@dataclass(frozen=True)
class Outcome:
    """How one side of a comparison ended: ``seconds`` of wall time, and
    ``error`` (the exception's name) if it failed."""

    seconds: float
    error: str | None = None

    def cell(self) -> str:
        """The table's cell: the time, or the failure and when it came."""
        if self.error is None:
            return f"{self.seconds:.2f} s"
        return f"failed: {self.error} after {self.seconds:.2f} s"


@dataclass(frozen=True)
class Row:
    """One comparison of a stage: corral as it ran (``corral_as``: the
    API and start method) against one way of running the stdlib
    (``stdlib_as``), and a note; ``label``: the stage in a few words, for
    the chart."""

    label: str
    stage: str
    corral: Outcome
    stdlib: Outcome
    corral_as: str
    stdlib_as: str
    note: str = ""

    def note_cell(self) -> str:
        """The note, after how corral ran (the table's columns are fixed:
        the stdlib's side has its own)."""
        return f"corral as run: {self.corral_as}; {self.note}" if self.note else f"corral as run: {self.corral_as}"

    def ratio(self) -> float | None:
        """stdlib seconds / corral seconds, None when either side failed."""
        if self.corral.error is not None or self.stdlib.error is not None:
            return None
        return self.stdlib.seconds / max(self.corral.seconds, 1e-9)

    def ratio_cell(self) -> str:
        """The ratio as the table prints it (who finished, if a side failed)."""
        r = self.ratio()
        if r is not None:
            return f"{r:.2f}x"
        if self.corral.error is None:
            return "only corral finished"
        return "only the stdlib finished" if self.stdlib.error is None else "both failed"


def table(rows: Sequence[Row]) -> list[str]:
    """The markdown table's lines."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r.stage, r.corral.cell(), r.stdlib.cell(), r.stdlib_as, r.ratio_cell(), r.note_cell()]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return out


def chart(rows: Sequence[Row], path: str, title: str) -> None:
    """Draws how many times quicker corral was in each comparison (a bar
    per row, log scale, 1x marked; a failed side is written, not drawn)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(rows)
    labels = [f"{r.label}\ncorral ({r.corral_as}) vs {r.stdlib_as}" for r in shown]
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(shown) + 1.6))
    ratios = [r.ratio() for r in shown]
    finite = [x for x in ratios if x is not None] or [1.0]
    top = max(max(finite) * 2.5, 4.0)
    low = min(min(finite) / 1.5, 0.5)
    for i, (r, x) in enumerate(zip(shown, ratios, strict=True)):
        if x is None:
            failed = r.stdlib.error or r.corral.error
            ax.text(1.0, i, f"  {r.ratio_cell()} (the other: {failed})", va="center", fontsize=9)
            continue
        ax.barh(i, x - 1.0, left=1.0, color="tab:green" if x >= 1 else "tab:red", height=0.6)
        ax.text(x, i, f" {x:.2f}x ", va="center", ha="left" if x >= 1 else "right", fontsize=9)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlim(low, top)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("stdlib seconds / corral seconds (right of 1x: corral was quicker)")
    ax.set_title(textwrap.fill(title, 100), fontsize=10, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(rows: Sequence[Row], notes: Sequence[str], out_dir: str, title: str) -> tuple[str, str]:
    """Writes ``demo.md`` (the table and the notes) and ``demo.png`` (the
    chart) into ``out_dir`` (made if missing); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "demo.md")
    png = os.path.join(out_dir, "demo.png")
    with open(md, "w") as f:
        f.write("\n".join([f"# {title}", "", *table(rows), "", *notes, "", "![the ratios](demo.png)", ""]))
    chart(rows, png, title)
    return md, png
