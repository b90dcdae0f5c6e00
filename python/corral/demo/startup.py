"""Stage 5: evaluation in a second pool of the program.

The model of stage 1 scores the held-out digits in a pool made for it, as
a program makes a pool per step: the time from making the pool to its
results (its workers unpickle a scikit-learn model, so they need
scikit-learn). Each side is as after a first pool: corral's fork server
has run since stage 1 and imported while idle the modules the parent had
imported by then (scikit-learn's ``linear_model`` and this stage's module
too); multiprocessing's fork server is up, but its workers import the
model's modules each time; fork copies the parent, which has them already
(and keeps nothing between pools).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import multiprocessing.forkserver
import time
from functools import partial
from typing import Any

import numpy as np

import corral

from .data import corral_label, method_label, stdlib_methods
from .report import Outcome, Row


def correct(model: Any, x: np.ndarray, y: np.ndarray) -> int:
    """How many of ``x`` the model labels right."""
    return int((model.predict(x) == y).sum())


def _on(ctx: Any) -> cf.ProcessPoolExecutor:
    """The stdlib's pool on the start method of ``ctx``."""
    return cf.ProcessPoolExecutor(mp_context=ctx)


def _evaluate(make_pool: Any, model: Any, x: np.ndarray, y: np.ndarray, parts: int) -> tuple[float, int, Any]:
    """Seconds from making a pool to its results, how many it found
    right, and the pool (shut down)."""
    xs, ys = np.array_split(x, parts), np.array_split(y, parts)
    t0 = time.perf_counter()
    with make_pool() as pool:
        right = sum(pool.map(correct, [model] * parts, xs, ys))
    return time.perf_counter() - t0, right, pool


def run(model: Any, x: np.ndarray, y: np.ndarray, tqdm: Any) -> tuple[list[Row], float]:
    """Runs the stage; returns its rows (one per start method of the
    stdlib) and the model's accuracy."""
    parts = 4
    methods = stdlib_methods()
    bar = tqdm(total=1 + len(methods), desc="5. second pools", leave=False)
    c, right, ours = _evaluate(corral.ProcessPoolExecutor, model, x, y, parts)
    ours_as = corral_label("corral.ProcessPoolExecutor", ours._start_method, "forkserver")
    bar.update()
    rows = []
    for method in methods:
        if method == "forkserver":
            # As after a first pool: the program's fork server is up (what
            # a pool keeps of it; corral's has been up since stage 1).
            multiprocessing.forkserver.ensure_running()
        # The default as a user writes it (no mp_context); another method by its context.
        make = cf.ProcessPoolExecutor if method == mp.get_start_method() else partial(_on, mp.get_context(method))
        s, theirs, _ = _evaluate(make, model, x, y, parts)
        bar.update()
        assert theirs == right
        note = {
            "fork": "fork copies the parent, scikit-learn's model code included; corral's fork server"
            " had imported it while idle, and forks from a process that runs one thread",
            "forkserver": "each stdlib worker imports scikit-learn from scratch; corral's fork server"
            " had imported it while idle",
            "spawn": "each stdlib worker starts an interpreter and imports scikit-learn",
        }.get(method, "")
        rows.append(
            Row(
                "5. a second pool's start",
                "5. evaluation: a second pool, its workers run a scikit-learn model (pool made -> results)",
                Outcome(c),
                Outcome(s),
                ours_as,
                f"concurrent.futures, {method_label(method)}",
                note,
            )
        )
    bar.close()
    return rows, right / len(y)
