"""`python -m corral`: the demo (so it never rots) and `info`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.timeout(330)
def test_quick_demo_runs_every_stage_prints_the_table_and_saves_the_chart(tmp_path) -> None:
    # It trains models: the bound leaves room for a loaded machine.
    out = subprocess.run(
        [sys.executable, "-m", "corral", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["stage", "corral", "stdlib", "stdlib as run", "corral vs stdlib", "note"], lines[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(r) == len(header) for r in rows), "every row has every column"
    stages = [r[0].split(".")[0] for r in rows]
    assert sorted(set(stages)) == ["1", "2", "3", "4", "5"], stages
    for stage, corral_s, stdlib_s, _stdlib_as, ratio, _note in rows:
        assert re.fullmatch(r"\d+\.\d\d s", corral_s), f"corral finished every stage: {stage}: {corral_s}"
        if stage.startswith("4."):
            assert stdlib_s.startswith("failed: BrokenProcessPool after "), "the stdlib's pool breaks"
            assert ratio == "only corral finished"
        else:
            assert re.fullmatch(r"\d+\.\d\d s", stdlib_s), f"the stdlib finished {stage}: {stdlib_s}"
            assert re.fullmatch(r"\d+\.\d\dx", ratio), ratio
    methods = {r[3] for r in rows if r[0].startswith("5.")}
    assert any("forkserver" in m for m in methods), "the start-up stage runs the stdlib on forkserver too"
    assert any("(the default here)" in m for m in methods), "and on this platform's default"
    notes = [line for line in out.stdout.splitlines() if line.startswith("stage")]
    scores = [float(a) for a in re.findall(r"\b[01]\.\d{3}\b", " ".join(notes))]
    assert len(scores) == 3 and min(scores) > 0.5, out.stdout  # the model and both loaders' (chance: 0.1)
    table = (tmp_path / "demo.md").read_text()
    assert all(line in table for line in lines), "the saved table is the printed one"
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(tmp_path / "demo.png") in out.stdout, "the demo says where the chart is"


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
    loaded = md + "\n### Channels, under load (a busy process per core)\n\n" + "\n".join(md.splitlines()[:4])
    assert ratios(loaded) == [("q", "mp.Queue", 2.5), ("q (under load)", "mp.Queue", 5.0)], (
        "a table under a heading that says so is a case of its own"
    )
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


def _gone(pid: int, timeout: float) -> bool:
    """True once process ``pid`` has exited (waits on its pidfd: no polling)."""
    import os
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_busy_load_runs_one_busy_process_per_core_and_leaves_none_behind() -> None:
    import os

    from corral._bench import busy_load

    with busy_load() as pids:
        assert len(pids) == os.cpu_count()
        assert all(_parent_of(p) == os.getpid() for p in pids)
    assert all(_gone(p, 0) for p in pids), "each busy process is killed and reaped when the block ends"
    with pytest.raises(KeyError), busy_load(2) as pids:
        raise KeyError("the bench failed")
    assert len(pids) == 2 and all(_gone(p, 0) for p in pids), "and when the block raises"
    with pytest.raises(ValueError):
        with busy_load(-1):
            pass


def test_busy_processes_leave_by_themselves_when_the_driver_is_killed() -> None:
    code = (
        "import os, signal\n"
        "from corral._bench import busy_load\n"
        "with busy_load(2) as pids:\n"
        "    print(*pids, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    assert all(_gone(p, 30) for p in pids), "a busy process outlived its killed driver"


@pytest.mark.timeout(120)
def test_bench_runs_every_script_skips_the_missing_and_runs_the_waits_under_load(tmp_path, monkeypatch) -> None:
    import os
    from pathlib import Path

    from corral import _bench

    real = Path(__file__).resolve().parent.parent / "benches"
    script = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(real)!r})\n"
        "from _report import emit, heading, table\n"
        "md = sys.argv[sys.argv.index('--markdown') + 1]\n"
        "load = os.environ.get('CORRAL_BENCH_LOAD', '0')\n"
        "emit([heading(os.path.basename(__file__)), '', *table([('ping', 'peer', f'load {load}', '2.0x')])], md)\n"
    )
    (tmp_path / "bench_a.py").write_text(script)
    (tmp_path / "bench_waits.py").write_text(script)
    (tmp_path / "bench_broken.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(_bench, "benches_dir", lambda: tmp_path)
    monkeypatch.setattr(_bench, "SCRIPTS", ["bench_a.py", "bench_not_written_yet.py", "bench_waits.py"])
    monkeypatch.setattr(_bench, "UNDER_LOAD", ["bench_waits.py"])
    out = tmp_path / "out.md"
    assert _bench.run(False, str(out), None, None) == 0
    text = out.read_text()
    n = os.cpu_count()
    assert f"| ping | peer | load {n} | 2.0x |" not in text, "the busy processes are counted once"
    assert f"| ping (under load) | peer | load {n} | 2.0x |" in text
    assert text.count("| ping | peer | load 0 | 2.0x |") == 2, "every script that is there runs idle"
    assert "bench_waits.py — " in text and f"under load ({n} busy processes)" in text
    assert ("ping (under load)", "peer", 2.0) in _bench.ratios(text), "the loaded row does not replace the idle one"
    out.unlink()
    assert _bench.run(False, str(out), None, None, load=False) == 0
    assert "under load" not in out.read_text()
    out.unlink()
    monkeypatch.setattr(_bench, "SCRIPTS", ["bench_broken.py", "bench_a.py"])
    assert _bench.run(False, str(out), None, None) == 1, "a failing script fails the run"
    assert "| ping | peer | load 0 | 2.0x |" in out.read_text(), "after the others have run"
