"""`python -m corral`: the demo (so it never rots) and `info`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.timeout(330)
def test_quick_demo_runs_every_stage_and_survives_the_killed_worker() -> None:
    # It trains models: the bound leaves room for a loaded machine.
    out = subprocess.run(
        [sys.executable, "-m", "corral", "demo", "--quick"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    for stage in ("| 1. HOG features", "| 2a. ", "| 2b. ", "| 3. data loader", "| 4. stage 1 with a worker SIGKILLed"):
        assert stage in out.stdout, out.stdout
    assert "corral: finished; stdlib: failed: BrokenProcessPool" in out.stdout
    scores = [float(a) for a in re.findall(r"(?:scores|accuracy) (\d\.\d+)", out.stdout)]
    assert len(scores) == 2
    assert min(scores) > 0.5, out.stdout  # ten classes: chance is 0.1


def test_info_names_the_version_and_the_build() -> None:
    import corral

    out = subprocess.run([sys.executable, "-m", "corral", "info"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"corral {corral.__version__}" in out.stdout
    assert "start methods: spawn, fork" in out.stdout
    assert "pool start methods: spawn, fork, forkserver" in out.stdout


def test_bench_reads_ratio_tables_and_draws_them(tmp_path) -> None:
    from corral._bench import ratios

    md = "\n".join(
        [
            "| case | implementation | result | corral vs this |",
            "|---|---|---|---|",
            "| q | corral.Queue | 10 k/s | — |",
            "| q | mp.Queue | 2 k/s | 5.0x |",
            "",
            "| stage | corral | stdlib | speedup |",
            "| other | 1 | 2 | 2.00x |",
            "| case | implementation | result | corral vs this |",
            "| q | mp.Queue | 4 k/s | 2.5x |",
        ]
    )
    assert ratios(md) == [("q", "mp.Queue", 2.5)], "later runs replace earlier ones; other tables are skipped"
    pytest.importorskip("matplotlib")
    src = tmp_path / "b.md"
    src.write_text(md)
    png = tmp_path / "chart.png"
    out = subprocess.run(
        [sys.executable, "-m", "corral", "bench", "--from", str(src), "--plot", str(png)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert png.stat().st_size > 1000
