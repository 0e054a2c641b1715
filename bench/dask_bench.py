"""DaskCoordinator vs Coordinator vs one process: warm reads of 20k PVs and a 10 s monitor, in one run.

    .venv/bin/python bench/dask_bench.py [--n 20000] [--counters 2000] [--seconds 10] [--workers 2]

Starts two loopback IOCs (``capar.testing.IOCSet``: *n* scalars and *counters* 10 Hz counters in all), then
for each engine: a one-shot ``get`` of the *n* scalars (best of 3, channels created each time), a connected
group's ``get`` (best of 5, warm channels) and a monitor of every counter for *seconds* (events delivered
vs the IOCs' 10 Hz, CPU seconds of every process of the engine).  The single process and the Coordinator
run in a fresh client process with the IOCs' environment; the Dask cluster is a LocalCluster of *workers*
processes x 1 thread.  Honest about this machine: with 2 cores, K workers share 2 CPUs with the IOCs.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from capar.testing import ClientProcess, IOCSet  # noqa: E402


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


# the same measurement code runs in a ClientProcess (single process, Coordinator) and here (Dask)
MEASURE = r'''
def measure(engine, scalars, counters, seconds, pids):
    import time, psutil
    def cpu():
        t = 0.0
        for p in pids():
            try:
                c = psutil.Process(p).cpu_times(); t += c.user + c.system
            except psutil.NoSuchProcess:
                pass
        return t
    out = {}
    best = None
    for _ in range(3):
        t0 = time.perf_counter(); s = engine.get(scalars, timeout=10, connection_timeout=10)
        dt = time.perf_counter() - t0; best = dt if best is None else min(best, dt)
        assert s.ok.all(), s.error[~s.ok][:3]
    out["oneshot"] = best
    g = engine.connect(scalars, connection_timeout=10) if hasattr(engine, "connect") else capar.Group(scalars, connection_timeout=10)
    best = None
    for _ in range(5):
        t0 = time.perf_counter(); s = g.get(timeout=10)
        dt = time.perf_counter() - t0; best = dt if best is None else min(best, dt)
        assert s.ok.all()
    out["warm"] = best
    g.close()
    mon = engine.monitor(counters, connection_timeout=10) if hasattr(engine, "monitor") else capar.Monitor(counters, connection_timeout=10)
    n = 0
    c0 = cpu(); t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        b = mon.get_batch(timeout=0.5)
        if b is not None:
            n += int((b.kind == 0).sum())
    out["events"] = n
    out["expected"] = int(len(counters) * 10 * seconds)
    out["cpu"] = cpu() - c0
    mon.close()
    return out
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--counters", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    iocs = IOCSet.scalars(2, args.n // 2, counters_per_ioc=args.counters // 2, tag="DB")
    iocs.start()
    scalars = [n for n in iocs.all_names if ":s" in n]
    counters = [n for n in iocs.all_names if ":c" in n]
    print(f"capar Dask benchmark  {time.strftime('%Y-%m-%dT%H:%M:%S')}  nproc {os.cpu_count()}  "
          f"{len(scalars)} scalars + {len(counters)} counters at 10 Hz on 2 IOCs; monitor {args.seconds:.0f} s")
    rows = []
    try:
        with ClientProcess(iocs.env, name="bench") as c:
            c.run(MEASURE)
            # the single-process engine: acquire for one-shot reads, then Group and Monitor (see MEASURE)
            c.run("class One:\n    def get(self, names, **kw):\n        return capar.acquire(names, **kw)\none = One()")
            rows.append(("one process", c.run("measure(one, s, k, sec, lambda: [os.getpid()])",
                                              s=scalars, k=counters, sec=args.seconds)))
            c.run(f"co = capar.Coordinator({args.workers})")
            rows.append((f"Coordinator K={args.workers}",
                         c.run("measure(co, s, k, sec, lambda: [os.getpid()] + co.pids)",
                               s=scalars, k=counters, sec=args.seconds)))
            c.run("co.close()")
        from distributed import Client, LocalCluster

        import capar

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          host="127.0.0.1", silence_logs=logging.ERROR) as lc, Client(lc) as client:
            ns: dict = {"capar": capar}
            exec(MEASURE, ns)
            pids = list(client.run(os.getpid).values()) + [os.getpid()]
            with capar.DaskCoordinator(client, epics_env=iocs.env) as dc:
                rows.append((f"DaskCoordinator K={args.workers}",
                             ns["measure"](dc, scalars, counters, args.seconds, lambda: pids)))
    finally:
        iocs.stop()
    print(f"{'engine':<24} {'one-shot get':>13} {'warm get':>10} {'events/s (IOCs: ' + str(len(counters) * 10) + ')':>24}"
          f" {'CPU s':>7} {'us/event':>9}")
    for name, r in rows:
        print(f"{name:<24} {r['oneshot']:>12.3f}s {r['warm']:>9.4f}s {r['events'] / args.seconds:>24.0f}"
              f" {r['cpu']:>7.2f} {1e6 * r['cpu'] / max(r['events'], 1):>9.2f}")
    print("CPU s: every process of the engine (client, workers; Dask: scheduler thread and nannies live in the "
          "client process) during the monitor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
