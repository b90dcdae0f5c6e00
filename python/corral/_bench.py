"""``python -m corral bench``: every peer benchmark in one command.

The benchmarks live in the source tree (``benches/``, beside the package in
a checkout); each prints a table of "corral vs this" ratios against the
peers that are installed. ``--markdown FILE`` appends the tables to FILE;
``--plot PNG`` draws the ratios (matplotlib); ``--from FILE`` draws the
chart from tables already in FILE instead of running anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPTS = [
    "bench_channels.py",
    "bench_sync.py",
    "bench_pool.py",
    "bench_arrays.py",
    "bench_threads.py",
    "bench_cluster.py",
]
_ROW = re.compile(r"^\| (?P<case>[^|]+?) \| (?P<impl>[^|]+?) \| (?P<result>[^|]+?) \| (?P<ratio>[0-9.]+)x \|\s*$")


def benches_dir() -> Path | None:
    """``benches/`` of the checkout this package was installed from."""
    here = Path(__file__).resolve().parent
    for root in (here.parent.parent, Path.cwd()):
        d = root / "benches"
        if (d / SCRIPTS[0]).is_file():
            return d
    return None


def ratios(markdown: str) -> list[tuple[str, str, float]]:
    """(case, implementation, corral vs it) of every table row; a later row
    for the same case and implementation replaces an earlier one."""
    found: dict[tuple[str, str], float] = {}
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("| case | implementation | result | corral vs this |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        m = _ROW.match(line) if in_table else None
        if m:
            found[(m["case"].strip(), m["impl"].strip())] = float(m["ratio"])
    return [(c, i, r) for (c, i), r in found.items()]


def plot(rows: list[tuple[str, str, float]], png: str) -> None:
    """A horizontal bar per (case, peer): how many times faster corral is
    (log scale; left of 1 means the peer is faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    labels = [f"{c[:48]} — vs {i[:40]}" for c, i, _ in rows]
    values = [r for _, _, r in rows]
    fig, ax = plt.subplots(figsize=(12, 0.28 * len(rows) + 1.5))
    colors = ["#2a7" if v >= 1 else "#c54" for v in values]
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("corral vs peer (times faster; log scale)")
    ax.set_title("corral against its peers, same run, same machine")
    fig.subplots_adjust(left=0.5, right=0.98, top=1 - 0.6 / fig.get_figheight(), bottom=0.8 / fig.get_figheight())
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=110)


def run(quick: bool, markdown: str | None, png: str | None, source: str | None) -> int:
    """Runs the benchmarks (or reads ``source``), then writes what was asked."""
    if source is not None:
        text = Path(source).read_text(encoding="utf-8")
    else:
        d = benches_dir()
        if d is None:
            print("the benchmarks are in the source tree's benches/ folder: run this from a checkout", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "tables.md")
            for script in SCRIPTS:
                args = [sys.executable, str(d / script), "--markdown", out] + (["--quick"] if quick else [])
                if subprocess.run(args).returncode != 0:
                    print(f"{script} failed", file=sys.stderr)
                    return 1
            text = Path(out).read_text(encoding="utf-8")
        if markdown:
            with open(markdown, "a", encoding="utf-8") as f:
                f.write(text)
    if png:
        rows = ratios(text)
        if not rows:
            print("no table rows with ratios found", file=sys.stderr)
            return 1
        plot(rows, png)
        print(f"chart of {len(rows)} ratios written to {png}")
    return 0
