"""The parent's RSS over a large-sample DataLoader epoch (bench_dataloader's
``rss`` row), with where it went: ``/proc/self/smaps`` Rss and Pss per
mapping at the epoch's peak, minus before the loader. Builds and loaders
take turns round after round, each measure in a fresh interpreter.

    python benches/ab_rss.py [--rounds N] [--impl NAME ...] [--pages] [BUILD ...]

A BUILD is ``LABEL=PYTHON[:PYTHONPATH]``, e.g. ``old=/work/torchenv/bin/python:/work/main/python``
(default: this interpreter as it is). Prints, per build and loader, the
median and range of the peak RSS delta, and the median per-mapping deltas
of the mappings that moved by 16 KiB or more. ``--pages``: also where,
in corral's queue mapping (file offsets), the pages resident at the peak
lie (``/proc/self/pagemap``; a diagnostic: reading it moves the figures a
little, so use it apart from the measure).
"""

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))

_PROBE = r"""
import json, os, re, sys
sys.path.insert(0, {here!r})
import importlib.util
if importlib.util.find_spec("torch"):
    import torch
import numpy as np
import bench_dataloader as b
import corral.dataloader

def smaps():
    out, name = {{}}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split(None, 5)
                name = parts[5].strip() if len(parts) > 5 else "[anon]"
                name = re.sub(r"\d+", "N", name) if name.startswith(("/dev/shm", "/memfd")) else name
            elif line.startswith(("Rss:", "Pss:")):
                key = line.split(":")[0]
                kb = int(line.split()[1])
                out.setdefault(name, {{"Rss": 0, "Pss": 0}})[key] += kb
    return out

def resident_runs():
    # Runs of resident pages of the queue's mapping, as file offsets in KiB.
    runs = []
    with open("/proc/self/maps") as f:
        spans = [l.split() for l in f if "memfd:corral-queue" in l]
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/pagemap", "rb") as pm:
        for s in spans:
            lo, hi = (int(x, 16) for x in s[0].split("-"))
            off = int(s[2], 16)
            pm.seek(lo // page * 8)
            raw = pm.read((hi - lo) // page * 8)
            start = None
            for i in range(0, len(raw) // 8 + 1):
                on = i < len(raw) // 8 and raw[8 * i + 7] & 0x80
                if on and start is None:
                    start = i
                elif not on and start is not None:
                    runs.append(((off + start * page) // 1024, (off + i * page) // 1024))
                    start = None
    return runs

def vmrss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

ds = b.Photos()
before, before_maps = vmrss(), smaps()
peak, peak_maps = before, before_maps
for batch in b.loaders(ds, 16, "fork")[sys.argv[1]]():
    float(batch.sum())  # the loop reads the batch
    now = vmrss()
    if now > peak:
        peak, peak_maps = now, smaps()
        if {pages!r}:
            peak_runs = resident_runs()
    del batch
delta = {{}}
for name in set(before_maps) | set(peak_maps):
    a, z = before_maps.get(name, {{"Rss": 0, "Pss": 0}}), peak_maps.get(name, {{"Rss": 0, "Pss": 0}})
    delta[name] = {{k: z[k] - a[k] for k in ("Rss", "Pss")}}
out = {{"rss_kb": peak - before, "maps": delta}}
if {pages!r}:
    out["runs"] = peak_runs
print(json.dumps(out), flush=True)
"""


def probe(python: str, path: str | None, impl: str, pages: bool = False) -> dict:
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = path
    code = _PROBE.format(here=HERE, pages=pages)
    out = subprocess.run([python, "-c", code, impl], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Runs the rounds and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--impl", action="append", help="loader name(s) of bench_dataloader.loaders")
    ap.add_argument("--pages", action="store_true", help="where the queue mapping's resident pages lie")
    ap.add_argument("builds", nargs="*", help="LABEL=PYTHON[:PYTHONPATH]")
    args = ap.parse_args()
    builds = []
    for spec in args.builds or [f"this={sys.executable}"]:
        label, _, rest = spec.partition("=")
        python, _, path = rest.partition(":")
        builds.append((label, python, path or None))
    impls = args.impl or ["corral.DataLoader", "torch DataLoader"]
    got: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in range(args.rounds):
        for label, python, path in builds:
            for impl in impls:
                res = probe(python, path, impl, args.pages)
                got[label, impl].append(res)
                print(f"round {r + 1} {label:8s} {impl:20s} {res['rss_kb'] / 1024:7.2f} MiB", flush=True)
                if res.get("runs"):
                    spans = ", ".join(f"{a}-{b}" for a, b in res["runs"])
                    total = sum(b - a for a, b in res["runs"])
                    print(f"    queue mapping resident at the peak, {total} KiB, file offsets in KiB: {spans}")
    print()
    for (label, impl), runs in got.items():
        rss = sorted(x["rss_kb"] for x in runs)
        print(f"{label} / {impl}: peak RSS delta median {rss[len(rss) // 2]} KiB ({rss[0]}-{rss[-1]})")
        names = {n for x in runs for n in x["maps"]}
        for n in sorted(names):
            rs = sorted(x["maps"].get(n, {"Rss": 0})["Rss"] for x in runs)
            ps = sorted(x["maps"].get(n, {"Pss": 0})["Pss"] for x in runs)
            if max(abs(rs[0]), abs(rs[-1])) >= 16:
                print(f"    {n[-60:]:60s} Rss {rs[len(rs) // 2]:7d} KiB ({rs[0]}..{rs[-1]})  Pss {ps[len(ps) // 2]:7d}")


if __name__ == "__main__":
    main()
