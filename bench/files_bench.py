"""One day of 1-minute snapshots of 10,000 PVs in every file format: write, read, and "PV X over the day".

    .venv/bin/python bench/files_bench.py [--pvs 10000] [--snapshots 1440] [--formats npz,json,csv,h5,parquet]

Synthetic snapshots (no IOC: this measures the files): 9,900 float PVs that drift, 50 text PVs and 50
100-element waveforms, status/severity/timestamps as a Group returns them.  npz/json/csv write one file
per snapshot (capar's Snapshot.save, what workers/archive.py did before); h5 and parquet append every
snapshot to ONE file (capar.TimeSeriesWriter, what archive.py --format hdf5|parquet does).  Columns: seconds
to write the day, MB on disk, seconds to read the whole day back, seconds to read one PV over the day.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import capar  # noqa: E402
from capar.snapshot import Snapshot  # noqa: E402


def make_snapshot(names: list[str], k: int, rng: np.random.Generator) -> Snapshot:
    n = len(names)
    snap = Snapshot.empty(names, form="time")
    vals = 100.0 + np.cumsum(rng.normal(size=n)) * 1e-3 + k * 1e-4
    n_text = n_wf = max(n // 200, 1)
    snap.value[:] = vals
    snap.values[:] = list(vals.tolist())
    for i in range(n - n_text - n_wf, n - n_wf):
        snap.values[i] = f"state {k % 7}"
        snap.value[i] = np.nan
    for i in range(n - n_wf, n):
        snap.values[i] = np.linspace(0, 1, 100) + k
        snap.value[i] = np.nan
    snap.status[:] = 0
    snap.severity[:] = 0
    snap.timestamp[:] = 1.7e9 + 60 * k + rng.random(n)
    snap.ok[:] = True
    snap.created = 1.7e9 + 60 * k
    return snap


def du(paths: list[str]) -> float:
    total = 0
    for p in paths:
        if os.path.isdir(p):
            total += sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
        elif os.path.exists(p):
            total += os.path.getsize(p)
    return total / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pvs", type=int, default=10_000)
    ap.add_argument("--snapshots", type=int, default=1440)
    ap.add_argument("--formats", default="npz,json,csv,h5,parquet")
    args = ap.parse_args()
    names = [f"SR:PV{i:05d}" for i in range(args.pvs)]
    rng = np.random.default_rng(1)
    snaps = [make_snapshot(names, k, rng) for k in range(min(args.snapshots, 30))]  # reused cyclically
    x = names[1234 % len(names)]
    print(f"capar file formats benchmark  {time.strftime('%Y-%m-%dT%H:%M:%S')}  {args.pvs} PVs x "
          f"{args.snapshots} snapshots (1 per minute: one day)  nproc {os.cpu_count()}")
    print(f"{'format':<22} {'write day':>10} {'MB':>9} {'read day':>10} {'PV X over the day':>18}")
    root = tempfile.mkdtemp(prefix="capar-files-bench-")
    try:
        for fmt in args.formats.split(","):
            d = os.path.join(root, fmt)
            os.makedirs(d)
            t0 = time.perf_counter()
            if fmt in ("h5", "parquet"):
                path = os.path.join(d, f"day.{fmt}")
                with capar.TimeSeriesWriter(path, names) as w:
                    for k in range(args.snapshots):
                        s = snaps[k % len(snaps)]
                        s.created = 1.7e9 + 60 * k
                        w.append(s)
                t_write = time.perf_counter() - t0
                mb = du([path, path + ".parts"])
                t0 = time.perf_counter()
                whole = capar.read_series(path, events=False)
                t_read = time.perf_counter() - t0
                assert len(whole) == args.pvs * args.snapshots
                t0 = time.perf_counter()
                one = capar.read_series(path, [x], events=False)
                t_one = time.perf_counter() - t0
                assert len(one) == args.snapshots
                label = f"{fmt} (1 file)"
            else:
                for k in range(args.snapshots):
                    snaps[k % len(snaps)].save(os.path.join(d, f"snap-{k:05d}.{fmt}"))
                t_write = time.perf_counter() - t0
                files = sorted(glob.glob(os.path.join(d, f"*.{fmt}")))
                mb = du(files)
                t0 = time.perf_counter()
                loaded = [Snapshot.load(f) for f in files]
                t_read = time.perf_counter() - t0
                del loaded
                t0 = time.perf_counter()
                series = []
                for f in files:  # what a user does without a time series file: open every snapshot
                    s = Snapshot.load(f)
                    series.append(s.values[s.index(x)])
                t_one = time.perf_counter() - t0
                assert len(series) == args.snapshots
                label = f"{fmt} ({len(files)} files)"
            print(f"{label:<22} {t_write:>9.2f}s {mb:>9.1f} {t_read:>9.2f}s {t_one:>17.3f}s", flush=True)
            shutil.rmtree(d)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
