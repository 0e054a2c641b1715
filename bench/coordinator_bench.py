"""Coordinator benchmark: K = 1, 2, 4 worker processes against one loopback IOC.

Rows: cold start of K workers; warm per-call overhead (a 2-PV get on a ShardedGroup); one-shot sharded
get of 10k / 20k scalars; repeated reads on a ShardedGroup of 20k; 100 x 100k-double waveforms through
shared memory vs pickled.  Best of 3 for each cell.  Run: ``.venv/bin/python bench/coordinator_bench.py``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def best(fn, runs: int) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scalars", type=int, default=20_000)
    ap.add_argument("--waveforms", type=int, default=100)
    ap.add_argument("--nelm", type=int, default=100_000)
    args = ap.parse_args(argv)

    from capar.testing import IOC, db_scalars, db_waveforms, unique_prefix

    P = unique_prefix("CB")
    db = db_scalars(P, args.scalars) + db_waveforms(P, args.waveforms, args.nelm)
    mab = args.nelm * 8 + 100_000
    print(f"capar Coordinator benchmark  {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
    print(f"machine: {platform.machine()}  nproc: {os.cpu_count()}  python: {platform.python_version()}")
    with IOC(db, prefix=P, max_array_bytes=mab, name="coordbench") as ioc:
        ioc.apply_env()
        import capar
        from capar import Coordinator

        names = [P + f"s{i}" for i in range(args.scalars)]
        wnames = [P + f"w{i}" for i in range(args.waveforms)]
        rows = []
        for k in (1, 2, 4):
            t0 = time.perf_counter()
            co = Coordinator(k)
            co.get(names[:1])  # first call: every worker creates its context
            cold = time.perf_counter() - t0
            try:
                g2 = co.connect(names[:2])
                g2.get()
                warm = best(lambda: g2.get(), max(args.runs, 10))
                one10 = best(lambda: co.get(names[:10_000]), args.runs)
                one20 = best(lambda: co.get(names), args.runs)
                g = co.connect(names)
                g.get()
                rep = best(lambda: g.get(), args.runs)
                wshm = best(lambda: co.get(wnames, timeout=30), args.runs)
            finally:
                co.close()
            with Coordinator(k, shm_threshold=None) as cp:
                cp.get(wnames[:1], timeout=30)
                wpk = best(lambda: cp.get(wnames, timeout=30), args.runs)
            rows.append((k, cold, warm, one10, one20, rep, wshm, wpk))
        t_local = best(lambda: capar.acquire(names), args.runs)
        print(f"IOC: {args.scalars} scalars + {args.waveforms} x {args.nelm} doubles; best of {args.runs}")
        print(f"single process capar.acquire of {args.scalars}: {t_local:.4f} s")
        hdr = ("K", "cold start", "warm call", "get 10k", f"get {args.scalars // 1000}k", "group get",
               "wf shm", "wf pickled", "shm gain")
        print(("{:>3} " + "{:>11} " * 8).format(*hdr))
        for k, cold, warm, one10, one20, rep, wshm, wpk in rows:
            print(("{:>3} " + "{:>10.4f}s " * 7 + "{:>10.2f}x").format(k, cold, warm, one10, one20, rep, wshm, wpk,
                                                                     wpk / wshm))
        k1_pickled = rows[0][7]
        k2_shm = rows[1][6]
        print(f"K=2 shared-memory waveforms vs K=1 pickled: {k1_pickled / k2_shm:.2f}x")
        capar.ca.finalize_libca()
    return 0


if __name__ == "__main__":
    sys.exit(main())
