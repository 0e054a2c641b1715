"""Monitor throughput: N counters at 10 Hz, every update delivered?  CPU per event of the client.

    .venv/bin/python bench/monitor_bench.py [--n 1000,5000] [--seconds 10] [--clients capar,pyepics]

For each N, starts ONE loopback-only IOC (``capar.testing.IOC``) with ``db_counters(P, N, ".1 second")``
and runs each client in a fresh subprocess (``--child``) whose environment is the IOC's ``IOC.env`` (every
inherited ``EPICS_*`` variable removed).  The child subscribes to all N counters, waits for the first
values plus a 1 s warm-up, then records for ``--seconds``:

- delivered: value events received in the window;
- expected: per PV, last value - first value + 1 seen in the window (counters go +1 per update), so
  delivered/expected == 100% means no update was lost (and none duplicated);
- CPU: user+system seconds of the client process over the window (``psutil``), per 100k events and per
  event.  The IOC's CPU is not counted.

Clients: ``C`` (``bench/cref.c monitor``: a plain libca client counting in its callback), ``capar``
(``capar.Monitor``; the consumer keeps per-PV first/last/count with numpy per batch), ``capar_pure``
(the same on the pure-ctypes path, ``CAPAR_CORE=0``), ``capar_k2``
(``capar.Coordinator(2).monitor``; CPU of the parent and both workers) and ``pyepics`` (``epics.PV(..., callback=...)``, skipped when pyepics is not installed; its callback
keeps the same per-PV bookkeeping in Python lists).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WARMUP = 1.0


# --------------------------------------------------------------------------------------------------
# children

def _names(prefix: str, n: int) -> list[str]:
    return [prefix + f"c{i}" for i in range(n)]


def _report(n: int, seconds: float, cpu: float, first: Any, last: Any, count: Any, extra: dict) -> None:
    import numpy as np

    first = np.asarray(first, dtype=float)
    last = np.asarray(last, dtype=float)
    count = np.asarray(count, dtype=np.int64)
    seen = ~np.isnan(first)
    expected = int(np.sum(last[seen] - first[seen] + 1))
    delivered = int(count.sum())
    out = {"n": n, "seconds": seconds, "delivered": delivered, "expected": expected,
           "pvs_seen": int(seen.sum()), "cpu": cpu,
           "cpu_per_100k": cpu / delivered * 1e5 if delivered else None,
           "us_per_event": cpu / delivered * 1e6 if delivered else None}
    out.update(extra)
    print(json.dumps(out), flush=True)


def _consume(get_batch: Any, n: int, seconds: float, cpu: Any) -> tuple:
    """Warm up, then record *seconds* of batches: per-PV first/last/count with numpy per batch."""
    import numpy as np

    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    count = np.zeros(n, dtype=np.int64)
    batches = overflow = 0
    t_end = time.monotonic() + WARMUP
    while time.monotonic() < t_end:
        get_batch(0.1)
    c0 = cpu()
    t0 = time.monotonic()
    t_end = t0 + seconds
    while time.monotonic() < t_end:
        b = get_batch(0.1)
        if b is None:
            continue
        batches += 1
        overflow += b.overflow
        sel = b.kind == 0
        idx = b.index[sel]
        val = b.value[sel]
        count += np.bincount(idx, minlength=n)
        new = np.isnan(first[idx])
        if new.any():
            fi = idx[new]
            first[fi] = np.inf
            np.minimum.at(first, fi, val[new])
        np.fmax.at(last, idx, val)
    c1 = cpu()
    return time.monotonic() - t0, c1 - c0, first, last, count, batches, overflow


def child_capar(prefix: str, n: int, seconds: float, label: str = "capar") -> None:
    import psutil

    import capar

    proc = psutil.Process()
    with capar.Monitor(_names(prefix, n), connection_timeout=30.0) as mon:
        elapsed, cpu, first, last, count, batches, overflow = _consume(
            mon.get_batch, n, seconds, lambda: sum(proc.cpu_times()[:2]))
    _report(n, elapsed, cpu, first, last, count,
            {"client": label, "batches": batches, "overflow": overflow, "connected": int(mon.connected.size)})


def child_capar_pure(prefix: str, n: int, seconds: float) -> None:
    """capar.Monitor on the pure-ctypes path (no compiled core), for a side-by-side figure."""
    os.environ["CAPAR_CORE"] = "0"
    child_capar(prefix, n, seconds, "capar_pure")


def child_capar_k2(prefix: str, n: int, seconds: float) -> None:
    """Coordinator(2).monitor: CPU is the parent's plus both workers'."""
    import psutil

    import capar

    proc = psutil.Process()
    with capar.Coordinator(2) as co:
        workers = [psutil.Process(pid) for pid in co.pids]

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in [proc] + workers)

        with co.monitor(_names(prefix, n), batch_interval=0.1, connection_timeout=30.0) as mon:
            elapsed, used, first, last, count, batches, overflow = _consume(mon.get_batch, n, seconds, cpu)
    _report(n, elapsed, used, first, last, count,
            {"client": "capar_k2", "batches": batches, "overflow": overflow})


def child_c(prefix: str, n: int, seconds: float) -> None:
    """The C libca reference (bench/cref.c, monitor mode)."""
    import tempfile

    sys.path.insert(0, HERE)
    from run import build_cref

    exe, why = build_cref()
    if exe is None:
        print(json.dumps({"client": "C", "n": n, "skip": why}), flush=True)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(_names(prefix, n)) + "\n")
    try:
        out = subprocess.run([exe, "monitor", f.name, str(int(seconds))], capture_output=True, text=True,
                             timeout=seconds + 120)
    finally:
        os.unlink(f.name)
    print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else json.dumps(
        {"client": "C", "n": n, "error": out.stderr[-500:]}), flush=True)


def child_pyepics(prefix: str, n: int, seconds: float) -> None:
    try:
        import epics
    except ImportError:
        print(json.dumps({"client": "pyepics", "skip": "pyepics not installed"}), flush=True)
        return
    import psutil

    proc = psutil.Process()
    names = _names(prefix, n)
    first: list[Any] = [float("nan")] * n
    last: list[Any] = [float("nan")] * n
    count = [0] * n
    state = {"rec": False}

    def make(i: int) -> Any:
        def cb(value: Any = None, **kw: Any) -> None:
            if state["rec"]:
                count[i] += 1
                last[i] = value
                if first[i] != first[i]:
                    first[i] = value
        return cb

    pvs = [epics.PV(nm, callback=make(i), form="time", auto_monitor=True) for i, nm in enumerate(names)]
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and not all(p.connected for p in pvs):
        time.sleep(0.05)
    time.sleep(WARMUP)
    c0 = sum(proc.cpu_times()[:2])
    t0 = time.monotonic()
    state["rec"] = True
    time.sleep(seconds)
    state["rec"] = False
    c1 = sum(proc.cpu_times()[:2])
    elapsed = time.monotonic() - t0
    _report(n, elapsed, c1 - c0, first, last, count,
            {"client": "pyepics", "connected": sum(p.connected for p in pvs)})
    # pyepics' own teardown of thousands of PVs takes minutes: the measurement is done, leave now
    os._exit(0)


# --------------------------------------------------------------------------------------------------
# parent

def _child_env(ioc_env: dict[str, str]) -> dict[str, str]:
    for key in ("EPICS_CA_ADDR_LIST",):
        host = ioc_env[key].split(":")[0]
        if host != "127.0.0.1":
            raise SystemExit(f"refusing non-loopback {key}={ioc_env[key]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    env.update(ioc_env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(ns: list[int], seconds: float, clients: list[str]) -> list[dict]:
    from capar.testing import IOC, db_counters, unique_prefix

    results = []
    for n in ns:
        prefix = unique_prefix("MB")
        with IOC(db_counters(prefix, n, ".1 second"), name=f"bench{n}", prefix=prefix) as ioc:
            env = _child_env(ioc.env)
            for client in clients:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", client, prefix, str(n),
                       str(seconds)]
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    out, err = proc.communicate(timeout=seconds + 120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                    results.append({"client": client, "n": n, "error": "timeout"})
                    _print_row(results[-1])
                    continue
                line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("{")), None)
                if line is None:
                    results.append({"client": client, "n": n, "error": (err or out)[-2000:]})
                else:
                    res = json.loads(line)
                    res.setdefault("n", n)
                    results.append(res)
                _print_row(results[-1])
    return results


def _print_row(r: dict) -> None:
    if "skip" in r or "error" in r:
        print(f"{r.get('client'):10s} N={r.get('n')}: {r.get('skip') or r.get('error')}", flush=True)
        return
    pct = 100.0 * r["delivered"] / r["expected"] if r["expected"] else 0.0
    print(f"{r['client']:10s} N={r['n']:5d}  {r['seconds']:.1f} s  delivered/expected "
          f"{r['delivered']}/{r['expected']} ({pct:.2f}%)  events/s {r['delivered'] / r['seconds']:.0f}  "
          f"CPU {r['cpu']:.2f} s = {r['cpu_per_100k']:.2f} s per 100k events "
          f"({r['us_per_event']:.2f} us/event)"
          + (f"  batches {r['batches']} overflow {r['overflow']}" if "batches" in r else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1000,5000", help="comma-separated PV counts")
    ap.add_argument("--seconds", type=float, default=10.0, help="recording window per client")
    ap.add_argument("--clients", default="C,capar,capar_pure,capar_k2,pyepics")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--child", nargs=4, metavar=("CLIENT", "PREFIX", "N", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        client, prefix, n, secs = args.child
        {"capar": child_capar, "capar_pure": child_capar_pure, "capar_k2": child_capar_k2, "C": child_c,
         "pyepics": child_pyepics}[client](prefix, int(n), float(secs))
        return 0
    results = run([int(x) for x in args.n.split(",")], args.seconds, args.clients.split(","))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
