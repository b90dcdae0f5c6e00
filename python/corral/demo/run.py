"""Runs the demo's stages and prints the table (see ``corral.demo``)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import tempfile
import time
from concurrent.futures.process import BrokenProcessPool

import numpy as np

import corral

from . import features, loader, service

WORKERS = 2


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _features(quick: bool) -> tuple[list[tuple[str, float, float, str]], list[str]]:
    x, y = _digits()
    variants = 2 if quick else 8
    work = features.tasks(x, variants)
    labels = np.concatenate([y] * variants)
    t0 = time.perf_counter()
    with corral.ProcessPoolExecutor(WORKERS) as pool:
        _, ours = features.run_features(pool, work, features.featurize, progress=not quick)
    c = time.perf_counter() - t0
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(WORKERS) as pool:
        _, theirs = features.run_features(pool, work, features.featurize)
    s = time.perf_counter() - t0
    assert np.allclose(ours, theirs)
    acc = features.accuracy(ours, labels)
    n = len(labels)
    rows = [(f"1. HOG features of {n} augmented digits, {WORKERS} worker processes", c, s, "")]
    notes = [f"stage 1: a linear classifier on the features scores {acc:.3f} on held-out images"]

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with corral.ProcessPoolExecutor(WORKERS, retries=1) as pool:
            _, ours = features.run_features(
                pool, features.tasks(x, variants, os.path.join(tmp, "c")), features.featurize_or_die
            )
        c = time.perf_counter() - t0
        ok = len(ours) == n
        t0 = time.perf_counter()
        try:
            with cf.ProcessPoolExecutor(WORKERS) as pool:
                features.run_features(
                    pool, features.tasks(x, variants, os.path.join(tmp, "s")), features.featurize_or_die
                )
            stdlib = "finished"
        except BrokenProcessPool as e:
            stdlib = f"failed: BrokenProcessPool ({str(e)[:60]}...)"
        s = time.perf_counter() - t0
    rows.append(
        (
            "4. stage 1 with a worker SIGKILLed midway",
            c,
            s,
            f"corral: {'finished' if ok else 'lost work'}; stdlib: {stdlib.split(' (')[0]}",
        )
    )
    notes.append(f"stage 4: corral re-ran the killed worker's task and finished all {n} images; the stdlib {stdlib}")
    return rows, notes


def _service(quick: bool) -> list[tuple[str, float, float, str]]:
    n = 200 if quick else 800
    ideal = n * service.LATENCY / service.LIMIT
    return [
        (
            f"2a. {n} service calls of {service.LATENCY * 1e3:.0f} ms, {service.LIMIT} at once,"
            f" thread pool (ideal {ideal:.2f} s)",
            service.threads(True, n),
            service.threads(False, n),
            "",
        ),
        (
            "2b. the same from asyncio (pool.run_async vs run_in_executor)",
            service.from_asyncio(True, n),
            service.from_asyncio(False, n),
            "",
        ),
    ]


def _loader(quick: bool) -> tuple[list[tuple[str, float, float, str]], list[str]]:
    producers, n_batches = 2, (10 if quick else 100)
    c = loader.run_job("corral", producers, n_batches)
    s = loader.run_job("multiprocessing", producers, n_batches)
    mb = loader.BATCH * loader.SIDE * loader.SIDE * 4 / 1e6
    rows = [
        (
            f"3. data loader: {producers} producers x {n_batches} batches of {mb:.0f} MB"
            " into SGDClassifier.partial_fit",
            c[0] + c[1],
            s[0] + s[1],
            f"streaming alone {s[1] / c[1]:.2f}x",
        )
    ]
    notes = [f"stage 3: test accuracy {c[2]:.3f} (corral run), {s[2]:.3f} (stdlib run)"]
    return rows, notes


def run(quick: bool = False) -> int:
    """Runs every stage, prints the table; returns the exit code."""
    print(f"corral demo{' (quick)' if quick else ''}: each stage with corral, then with the standard library\n")
    t0 = time.perf_counter()
    rows: list[tuple[str, float, float, str]] = []
    notes: list[str] = []
    feature_rows, feature_notes = _features(quick)
    rows += feature_rows[:1]
    rows += _service(quick)
    loader_rows, loader_notes = _loader(quick)
    rows += loader_rows
    rows += feature_rows[1:]
    notes += feature_notes[:1] + loader_notes + feature_notes[1:]
    print("| stage | corral s | stdlib s | speedup | note |")
    print("|---|---|---|---|---|")
    for name, c, s, note in sorted(rows, key=lambda r: r[0]):
        speedup = "—" if "failed" in note else f"{s / c:.2f}x"
        print(f"| {name} | {c:.2f} | {s:.2f} | {speedup} | {note} |")
    print()
    for n in notes:
        print(n)
    print(f"\ndemo ran in {time.perf_counter() - t0:.1f} s")
    return 0
