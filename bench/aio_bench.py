"""aioca vs capar.aio on one loopback IOC: caget of N PVs as a list, and camonitor events/s on counters.

    .venv/bin/python bench/aio_bench.py [--pvs 1000] [--counters 200] [--scan .01] [--seconds 5]

The IOC (``capar.testing.IOC``, 127.0.0.1 only) is started here and stopped by its handle; each client runs
in its own fresh process (``--client aioca|capar``), one after the other, so neither shares libca with the
other.  caget: the first call (channel creation + connection + read) and the best of 5 repeated calls on
connected channels.  camonitor: ``all_updates=True`` on every counter, events delivered per second of wall
time and client CPU microseconds per event (process time / events), against the IOC's expected rate.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time


def client(lib: str, prefix: str, n_pvs: int, n_counters: int, seconds: float) -> dict:
    if lib == "aioca":
        import aioca as A
    else:
        from capar import aio as A
    names = [f"{prefix}s{i}" for i in range(n_pvs)]
    counters = [f"{prefix}c{i}" for i in range(n_counters)]

    async def main() -> dict:
        t = time.perf_counter()
        values = await A.caget(names, timeout=30)
        first = time.perf_counter() - t
        assert len(values) == n_pvs and float(values[-1]) == n_pvs - 1
        again = []
        for _ in range(5):
            t = time.perf_counter()
            await A.caget(names, timeout=30)
            again.append(time.perf_counter() - t)
        await A.connect(counters, timeout=30)
        count = [0]

        def cb(value: object, index: int) -> None:
            count[0] += 1

        subs = A.camonitor(counters, cb, all_updates=True)
        await asyncio.sleep(1.0)  # subscriptions made, first values in
        count[0] = 0
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        events, wall, cpu = count[0], time.perf_counter() - t0, time.process_time() - c0
        for s in subs:
            s.close()
        return {"lib": lib, "first": first, "again": min(again), "events": events, "wall": wall, "cpu": cpu}

    return asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pvs", type=int, default=1000)
    ap.add_argument("--counters", type=int, default=2000)
    ap.add_argument("--scan", default=".1", help="counter SCAN period, seconds (a menuScan choice)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        print(json.dumps(client(args.client, args.prefix, args.pvs, args.counters, args.seconds)))
        return 0

    from capar.testing import IOC, db_counters, db_scalars, unique_prefix

    prefix = unique_prefix("B")
    ioc = IOC(db_scalars(prefix, args.pvs) + db_counters(prefix, args.counters, scan=f"{args.scan} second"),
              name="aio-bench", prefix=prefix)
    ioc.start()
    rows = []
    try:
        env = dict(os.environ, **ioc.env)
        for lib in ("aioca", "capar"):
            cmd = [sys.executable, __file__, "--client", lib, "--prefix", prefix, "--pvs", str(args.pvs),
                   "--counters", str(args.counters), "--seconds", str(args.seconds)]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = proc.communicate(timeout=120 + args.seconds)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if proc.returncode != 0:
                print(f"{lib}: failed\n{err}", file=sys.stderr)
                continue
            rows.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        ioc.stop()
    expected = args.counters / float(args.scan)
    print(f"{args.pvs} PVs, {args.counters} counters at {args.scan} s ({expected:,.0f} events/s expected), "
          f"loopback IOC, Python {sys.version.split()[0]}")
    print(f"{'':10s} {'caget first':>12s} {'caget again':>12s} {'events/s':>10s} {'CPU us/event':>13s}")
    for r in rows:
        rate = r["events"] / r["wall"]
        per = 1e6 * r["cpu"] / max(r["events"], 1)
        print(f"{r['lib']:10s} {r['first']:11.3f}s {r['again']:11.4f}s {rate:10,.0f} {per:13.1f}")
    if len(rows) == 2:
        a, c = rows
        print(f"{'ratio':10s} {a['first'] / c['first']:11.1f}x {a['again'] / c['again']:11.1f}x "
              f"{(c['events'] / c['wall']) / (a['events'] / a['wall']):9.2f}x "
              f"{(a['cpu'] / max(a['events'], 1)) / (c['cpu'] / max(c['events'], 1)):12.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
