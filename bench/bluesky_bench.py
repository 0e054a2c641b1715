"""A bluesky baseline of N PVs: one ``capar.bluesky.GroupReadable`` vs N ophyd ``EpicsSignalRO``\\ s.

    .venv/bin/python bench/bluesky_bench.py [--pvs N] [--repeats R]

One loopback IOC (``capar.testing.IOC``, N ao records) is started here and stopped by its handle at the end.
Each client runs in a process of its own (ophyd picks ONE control layer per process) and reports the time to
connect everything and the steady-state reads per second of R full passes over the N PVs (after one warm-up
pass):

- ``GroupReadable.read``: capar's bulk path, one ``read()`` = every PV (what bluesky calls per baseline);
- ``ophyd + capar``: N ``EpicsSignalRO.read()`` with ``capar.ophyd.use_capar()``;
- ``ophyd + pyepics``: the same with ophyd's own pyepics control layer;
- ``ophyd + epicsrs``: the same with ``ophyd_epicsrs.use_epicsrs()`` (when it is installed and works);
- ``epicsrs bulk_get``: ophyd-epicsrs' own bulk primitive (``get_ca_context().bulk_get``), for reference.

``EpicsSignalRO`` uses ophyd's defaults (``auto_monitor=False``: every ``read()`` is a fresh CA read);
``--auto-monitor`` adds the same ophyd rows with ``auto_monitor=True`` (reads served from monitors).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Optional

from capar.testing import IOC, db_scalars, unique_prefix

CLIENT = r'''
import json, os, sys, time
kind, P, n, repeats, auto_monitor = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
names = [f"{P}s{i}" for i in range(n)]
out = {}
t0 = time.perf_counter()
if kind == "group":
    from capar.bluesky import GroupReadable
    obj = GroupReadable(names, name="baseline", timeout=10.0, connection_timeout=30.0)
    obj.wait_for_connection()
    out["connect"] = time.perf_counter() - t0
    def one_pass():
        r = obj.read()
        assert len(r) == n
elif kind == "epicsrs-bulk":
    from ophyd_epicsrs import get_ca_context
    ctx = get_ca_context()
    first = ctx.bulk_get(names, timeout=30.0)
    assert all(v is not None for v in first.values())
    out["connect"] = time.perf_counter() - t0
    def one_pass():
        r = ctx.bulk_get(names, timeout=30.0)
        assert len(r) == n
else:
    if kind == "capar":
        import capar.ophyd
        capar.ophyd.use_capar()
    elif kind == "epicsrs":
        from ophyd_epicsrs import use_epicsrs
        use_epicsrs()
    import ophyd
    sigs = [ophyd.EpicsSignalRO(name, name=f"s{i}", auto_monitor=auto_monitor) for i, name in enumerate(names)]
    for s in sigs:
        s.wait_for_connection(timeout=30.0)
    out["connect"] = time.perf_counter() - t0
    out["layer"] = ophyd.cl.name
    def one_pass():
        for s in sigs:
            s.read()
one_pass()
t0 = time.perf_counter()
for _ in range(repeats):
    one_pass()
out["reads_per_s"] = n * repeats / (time.perf_counter() - t0)
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)  # no teardown in the timing process: every client leaves the same way
'''

ROWS = (("GroupReadable.read", "group"), ("ophyd + capar", "capar"), ("ophyd + pyepics", "pyepics"),
        ("ophyd + epicsrs", "epicsrs"), ("epicsrs bulk_get", "epicsrs-bulk"))


def _available(kind: str) -> bool:
    mods = {"capar": ("ophyd",), "pyepics": ("ophyd", "epics"), "epicsrs": ("ophyd", "ophyd_epicsrs"),
            "epicsrs-bulk": ("ophyd_epicsrs",), "group": ()}[kind]
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in mods)


def run_client(kind: str, prefix: str, n: int, repeats: int, env: dict[str, str], auto_monitor: bool = False,
               timeout: float = 600.0) -> Optional[dict]:
    """Run one client process; its result dict, or None (with the reason printed) when it failed.

    timeout : float, seconds for the whole client.
    """
    full = dict(os.environ)
    full.pop("PYTHONPATH", None)
    full.update(env)
    full["OPHYD_CONTROL_LAYER"] = "pyepics" if kind == "pyepics" else "dummy"
    try:
        proc = subprocess.run([sys.executable, "-c", CLIENT, kind, prefix, str(n), str(repeats),
                               "1" if auto_monitor else "0"], capture_output=True, text=True, env=full,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {kind}: did not finish in {timeout:.0f} s", file=sys.stderr)
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"  {kind}: failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark and print one table; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pvs", type=int, default=2000, help="number of PVs (default 2000)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over all PVs (default 5)")
    ap.add_argument("--auto-monitor", action="store_true", help="also ophyd rows with auto_monitor=True")
    args = ap.parse_args(argv)
    n, repeats = args.pvs, args.repeats
    prefix = unique_prefix("BB")
    print(f"bluesky baseline bench: {n} PVs (ao records) on one loopback IOC, {repeats} timed passes per client")
    results: list[tuple[str, dict]] = []
    with IOC(db_scalars(prefix, n), name="bluesky-bench", prefix=prefix) as ioc:
        plan = [(label, kind, False) for label, kind in ROWS]
        if args.auto_monitor:
            plan += [(label + " (auto_monitor)", kind, True) for label, kind in ROWS[1:4]]
        for label, kind, monitor in plan:
            if not _available(kind):
                print(f"  {label}: not installed, skipped")
                continue
            res = run_client(kind, prefix, n, repeats, ioc.env, auto_monitor=monitor)
            if res is not None:
                results.append((label, res))
    if not results:
        return 1
    base = dict(results).get("GroupReadable.read", results[0][1])["reads_per_s"]
    print(f"\n{'client':34s} {'connect s':>10s} {'reads/s':>12s} {'vs GroupReadable':>17s}")
    for label, res in results:
        print(f"{label:34s} {res['connect']:10.3f} {res['reads_per_s']:12,.0f} {res['reads_per_s'] / base:16.4f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
