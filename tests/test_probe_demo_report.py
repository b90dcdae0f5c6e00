"""The demo's table says how corral ran in every row (its API and start
method, as the stdlib's side has said since stop 21), and its closing line
counts the imports before the first stage (found by the outside probe of
stop 22: corral's side named no start method, so stage 5's 0.22x against
fork did not say corral ran on forkserver; "demo ran in 21.3 s" was printed
by a run that took 28.5 s of wall time)."""

import importlib.util
import subprocess
import sys

import pytest

needs_demo = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("numpy", "sklearn", "tqdm")),
    reason="the demo's packages are not installed (pip install 'corral[demo]')",
)


def test_every_row_of_the_table_says_how_corral_ran() -> None:
    from corral.demo.report import Outcome, Row, table

    rows = [
        Row("a", "1. a", Outcome(1.0), Outcome(2.0), "corral.ProcessPoolExecutor, forkserver", "x, fork", "why"),
        Row("b", "2. b", Outcome(1.0), Outcome(1.0, "E"), "corral.DataLoader, fork", "y, fork"),
    ]
    lines = table(rows)[2:]
    assert "| corral as run: corral.ProcessPoolExecutor, forkserver; why |" in lines[0]
    assert "| corral as run: corral.DataLoader, fork |" in lines[1]


@needs_demo
def test_a_stage_names_corrals_api_and_the_start_method_its_pool_used() -> None:
    from tqdm import tqdm

    from corral.demo import data, small_items

    d = data.digits()
    few = data.Digits(d.train_x[:40], d.train_y[:40], d.test_x[:10], d.test_y[:10])
    row, _, _ = small_items.run(few, 1, tqdm)
    assert row.corral_as == "corral.ProcessPoolExecutor, forkserver (its default)"
    assert row.note_cell().startswith("corral as run: corral.ProcessPoolExecutor, forkserver (its default); ")


@needs_demo
def test_the_closing_line_counts_the_time_since_the_process_started() -> None:
    code = (
        "import time; t0 = time.monotonic(); time.sleep(1.0)\n"
        "from corral.demo.run import process_seconds\n"
        "print(process_seconds(), time.monotonic() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    since_start, since_first_line = map(float, out.stdout.split())
    # Clock ticks are 10 ms: the process is older than its first line's clock.
    assert since_start >= since_first_line - 0.02, out.stdout
    assert since_start >= 1.0
