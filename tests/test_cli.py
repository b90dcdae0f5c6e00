"""`python -m corral`: the demo (so it never rots) and `info`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_quick_demo_trains_a_model_through_both_loaders_and_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "corral", "demo", "--quick"], capture_output=True, text=True, timeout=110
    )
    assert out.returncode == 0, out.stderr
    assert "| stream batches into training |" in out.stdout
    accuracies = [float(a) for a in re.findall(r"accuracy (\d\.\d+)", out.stdout)]
    assert len(accuracies) == 2
    assert min(accuracies) > 0.5, out.stdout  # ten classes: chance is 0.1


def test_info_names_the_version_and_the_build() -> None:
    import corral

    out = subprocess.run([sys.executable, "-m", "corral", "info"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"corral {corral.__version__}" in out.stdout
    assert "start methods: spawn, fork" in out.stdout
