"""``python -m corral bench``: every peer benchmark in one command.

The benchmarks live in the source tree (``benches/``, beside the package in
a checkout); each prints a table of "corral vs this" ratios against the
peers that are installed. ``--markdown FILE`` appends the tables to FILE;
``--plot PNG`` draws the ratios (matplotlib); ``--from FILE`` draws the
chart from tables already in FILE instead of running anything.

The scripts in ``UNDER_LOAD`` (the waits) run a second time with a busy
process per core (``busy_load``) started around them and killed after them,
whatever happens; the script sees ``CORRAL_BENCH_LOAD`` (the number of busy
processes) and its report marks its tables "under load"
(``benches/_report.py``). ``--no-load`` skips those runs. A script missing
from the checkout is skipped with a note; a script that fails is reported
at the end, after the others have run.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

SCRIPTS = [
    "bench_channels.py",
    "bench_sync.py",
    "bench_pool.py",
    "bench_threads.py",
    "bench_cluster.py",
    "bench_startup.py",
    "bench_arrays.py",
    "bench_torch.py",
    "bench_dataloader.py",
]
#: The scripts that also run under load: those that measure waits, whose
#: cost depends on whether the other side is running (issue 13). (Run by
#: hand, they take ``--under-load``: the same load, ``benches/_load.py``.)
UNDER_LOAD = ["bench_sync.py", "bench_channels.py"]
#: Set for a script run under load: the number of busy processes.
LOAD_ENV = "CORRAL_BENCH_LOAD"
_ROW = re.compile(r"^\| (?P<case>[^|]+?) \| (?P<impl>[^|]+?) \| (?P<result>[^|]+?) \| (?P<ratio>[0-9.]+)x \|\s*$")

# A busy process: ``while True: pass``, but it leaves by itself within a few
# ms once its parent (the driver) is gone, even if the driver was SIGKILLed
# and could not kill it.
_BUSY = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(200_000):
        pass
"""


@contextlib.contextmanager
def busy_load(n: int | None = None) -> Iterator[list[int]]:
    """Runs ``n`` busy processes (default: one per core) for the ``with``
    block; yields their pids. They are killed and reaped when the block ends,
    by an exception or Ctrl-C too (they run in their own session, so a
    Ctrl-C at the terminal reaches the driver only), and each leaves by
    itself when the driver dies without ending the block."""
    count = (os.cpu_count() or 1) if n is None else n
    if count < 0:
        raise ValueError("the number of busy processes must be >= 0")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BUSY, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


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
    for the same case and implementation replaces an earlier one. A row
    under a heading that says "under load" is a case of its own (its case
    ends in " (under load)"), whether or not the script marked it."""
    found: dict[tuple[str, str], float] = {}
    in_table = False
    loaded = False
    for line in markdown.splitlines():
        if line.startswith("#"):
            loaded = "under load" in line
        if line.startswith("| case | implementation | result | corral vs this |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        m = _ROW.match(line) if in_table else None
        if m:
            case = m["case"].strip()
            if loaded and not case.endswith(" (under load)"):
                case += " (under load)"
            found[(case, m["impl"].strip())] = float(m["ratio"])
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


def run(quick: bool, markdown: str | None, png: str | None, source: str | None, load: bool = True) -> int:
    """Runs the benchmarks (or reads ``source``), then writes what was asked;
    ``load=False`` skips the runs under load."""
    failed: list[str] = []
    if source is not None:
        text = Path(source).read_text(encoding="utf-8")
    else:
        d = benches_dir()
        if d is None:
            print("the benchmarks are in the source tree's benches/ folder: run this from a checkout", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "tables.md")
            Path(out).touch()
            for script in SCRIPTS:
                if not (d / script).is_file():
                    print(f"note: {script} is not in {d}: skipped", file=sys.stderr)
                    continue
                args = [sys.executable, str(d / script), "--markdown", out] + (["--quick"] if quick else [])
                if subprocess.run(args).returncode != 0:
                    failed.append(script)
                if load and script in UNDER_LOAD:
                    with busy_load() as pids:
                        print(f"{script} again, under load: {len(pids)} busy processes", flush=True)
                        env = dict(os.environ, **{LOAD_ENV: str(len(pids))})
                        if subprocess.run(args, env=env).returncode != 0:
                            failed.append(f"{script} (under load)")
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
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
