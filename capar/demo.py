"""``make demo``: start the bundled demo IOC (10,000 PVs on loopback), snapshot it, print a summary.

Run as ``python -m capar.demo [--pvs N] [--out FILE] [--processes K]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional

__all__ = ["main"]


def main(argv: Optional[list[str]] = None) -> int:
    """Run the demo; returns the process exit status (0 when every PV was read)."""
    ap = argparse.ArgumentParser(prog="python -m capar.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--pvs", type=int, default=10_000, help="number of generated PVs (default 10000)")
    ap.add_argument("--processes", type=int, default=2, help="worker processes for the sharded read")
    ap.add_argument("--out", default=None, help="snapshot file (.json/.csv/.npz; default in a temp dir)")
    args = ap.parse_args(argv)

    from capar.testing import IOC, db_all_types, db_scalars, unique_prefix

    prefix = unique_prefix("DEMO")
    print(f"starting demo IOC with {args.pvs} PVs on 127.0.0.1 ...", flush=True)
    with IOC(db_scalars(prefix, args.pvs) + db_all_types(prefix), prefix=prefix, name="demo") as ioc:
        ioc.apply_env()
        print(f"IOC pid {ioc.pid}, EPICS_CA_ADDR_LIST={ioc.env['EPICS_CA_ADDR_LIST']}", flush=True)
        import capar

        names = [prefix + f"s{i}" for i in range(args.pvs)]
        # 1. one process, the bulk path
        t0 = time.perf_counter()
        snap = capar.acquire(names, form="time", timeout=5.0)
        dt = time.perf_counter() - t0
        print(f"bulk read:    {len(snap)} PVs, {snap.n_ok} ok, {dt:.3f} s, {len(snap) / dt:,.0f} PVs/s")
        # 2. a sharded snapshot: worker processes (each with its own CA context) read chunks in parallel
        k = max(1, args.processes)
        chunk = 2500
        t0 = time.perf_counter()
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(names), unit="PV", file=sys.stderr, disable=not sys.stderr.isatty())
        except ImportError:  # pragma: no cover - tqdm is optional
            bar = None
        parts = []
        with capar.Coordinator(k) as co:
            start = time.perf_counter() - t0
            for i in range(0, len(names), chunk):
                parts.append(co.get(names[i:i + chunk], form="time", timeout=5.0))
                if bar is not None:
                    bar.update(len(parts[-1]))
        if bar is not None:
            bar.close()
        dt2 = time.perf_counter() - t0
        done = sum(p.n_ok for p in parts)
        print(f"sharded read: {len(names)} PVs over {k} processes, {done} ok, {dt2:.3f} s "
              f"(incl. {start:.3f} s to start the workers)")
        snap = capar.Snapshot.from_rows([r for p in parts for r in p], form="time")
        out = args.out or os.path.join(tempfile.mkdtemp(prefix="capar-demo-"), "snapshot.npz")
        snap.save(out)
        print(f"snapshot saved: {out}")
        first = snap[names[0]]
        print(f"example: {first.name} = {first.value} (severity {first.severity})")
        capar.ca.finalize_libca()
    print("demo IOC stopped")
    return 0 if snap.ok.all() and done == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
