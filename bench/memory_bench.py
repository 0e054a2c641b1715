"""Resident memory per PV of a 100k-PV Group and a 100k-PV Monitor: C libca vs capar.

    .venv/bin/python bench/memory_bench.py [--n 100000]

One loopback IOC with N scalars (a Monitor subscribes to them: their values do not change, so the ring
holds the first event of each PV).  Each client runs in a fresh process and reports its resident size
(/proc/self/statm) after libca is loaded and the context created, and after every channel is connected
(Group) or every channel is connected and subscribed with 2 s of events drained (Monitor).  The C reference
(``bench/cref.c memory``) holds libca's channels (and subscriptions) only; the difference per PV is what
capar adds on top of libca.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import build_cref, client_env, stop_strays  # noqa: E402


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(kind: str, namesfile: str) -> None:
    import numpy  # noqa: F401  (imported before the first figure, as libca is loaded before it)

    import capar
    import capar.bulk  # noqa: F401
    import capar.monitor  # noqa: F401

    with open(namesfile) as f:
        names = [line.strip() for line in f if line.strip()]
    capar.ca.initialize_libca()
    before = _rss_kb()
    if kind == "group":
        obj = capar.Group(names, connection_timeout=60.0)
        connected = int(obj.connected.sum())
        assert obj.get(timeout=30.0).ok.all()
    else:
        obj = capar.Monitor(names, connection_timeout=60.0)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            obj.get_batch(0.2)
        connected = int(obj.connected.sum())
    print(json.dumps({"client": f"capar {kind}", "n": len(names), "connected": connected,
                      "rss_before_kb": before, "rss_after_kb": _rss_kb(),
                      "core": capar.ca.accelerated()}), flush=True)
    obj.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    from capar.testing import IOC, db_scalars, unique_prefix

    cref, msg = build_cref()
    prefix = unique_prefix()
    marker = f"memory-{os.getpid()}"
    with IOC(db_scalars(prefix, args.n)) as ioc, tempfile.TemporaryDirectory() as tmp:
        env, _ = client_env(dict(ioc.env), marker)
        namesfile = os.path.join(tmp, "names")
        with open(namesfile, "w") as f:
            f.write("\n".join(prefix + f"s{i}" for i in range(args.n)) + "\n")
        rows = []
        try:
            for label, cmd in (("C channels", [cref, "memory", namesfile, "0"] if cref else None),
                               ("capar Group", [sys.executable, __file__, "--child", "group", namesfile]),
                               ("C subscriptions", [cref, "memory", namesfile, "1"] if cref else None),
                               ("capar Monitor", [sys.executable, __file__, "--child", "monitor", namesfile])):
                if cmd is None:
                    print(f"{label:<16} skipped: C reference unavailable ({msg})")
                    continue
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
                r = json.loads([x for x in p.stdout.splitlines() if x.startswith("{")][-1])
                per = (r["rss_after_kb"] - r["rss_before_kb"]) * 1024 / r["n"]
                rows.append((label, per))
                print(f"{label:<16} {r['connected']:>7,}/{r['n']:,} connected  RSS {r['rss_before_kb'] / 1024:7.1f} MB"
                      f" -> {r['rss_after_kb'] / 1024:7.1f} MB  = {per:6.0f} bytes per PV", flush=True)
        finally:
            stop_strays(marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
