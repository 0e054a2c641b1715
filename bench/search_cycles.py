"""Repeated one-shot connects of the same names in ONE process: how often do libca's search retries show?

    .venv/bin/python bench/search_cycles.py [--n 10000] [--cycles 50]

One loopback IOC with N scalars.  Each client runs CYCLES cycles in one process and one CA context:
create every channel, wait until all are connected, clear them all.  Per cycle it records how many
channels were connected after 1 s and the seconds until all were.  Clients: ``C`` (``bench/cref.c
cycles``: create + ca_pend_io + ca_state polls + clear) and ``capar`` (``capar.Group(names,
connection_timeout=1.0)``, then ``reconnect`` until all are connected, ``close``; the pure-ctypes path
too when the compiled core is built: ``capar_pure``).  Prints, per client, the cycles that had late
channels (not connected after 1 s), the late fraction in those cycles and the slowest cycle.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import build_cref, client_env, stop_strays  # noqa: E402


def child_capar(namesfile: str, cycles: int) -> None:
    import capar

    with open(namesfile) as f:
        names = [line.strip() for line in f if line.strip()]
    capar.ca.initialize_libca()
    for r in range(cycles):
        t0 = time.monotonic()
        g = capar.Group(names, connection_timeout=1.0)
        at1 = int(g.connected.sum())
        while int(g.connected.sum()) < len(names) and time.monotonic() - t0 < 60:
            g.reconnect(timeout=0.05)
        print(json.dumps({"cycle": r, "seconds": round(time.monotonic() - t0, 4), "connected_at_1s": at1,
                          "n": len(names)}), flush=True)
        g.close()


def summarize(client: str, lines: list[dict]) -> None:
    late = [x for x in lines if x["connected_at_1s"] < x["n"]]
    frac = [1 - x["connected_at_1s"] / x["n"] for x in late]
    slow = max((x["seconds"] for x in lines), default=float("nan"))
    typical = sorted(x["seconds"] for x in lines)[len(lines) // 2] if lines else float("nan")
    print(f"{client:<11} cycles {len(lines):>3}  with late channels {len(late):>3}"
          f"  late fraction in those {max(frac, default=0):6.1%} max, {sum(frac) / max(len(frac), 1):6.1%} mean"
          f"  median {typical:6.3f} s  slowest {slow:6.2f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_capar(args.child[0], int(args.child[1]))
        return 0
    from capar.ca.core import accelerated
    from capar.testing import IOC, db_scalars, unique_prefix

    cref, msg = build_cref()
    prefix = unique_prefix()
    marker = f"cycles-{os.getpid()}"
    with IOC(db_scalars(prefix, args.n)) as ioc, tempfile.TemporaryDirectory() as tmp:
        env, _ = client_env(dict(ioc.env), marker)
        namesfile = os.path.join(tmp, "names")
        with open(namesfile, "w") as f:
            f.write("\n".join(prefix + f"s{i}" for i in range(args.n)) + "\n")
        print(f"{args.n:,} names, {args.cycles} cycles per client, one process each (C reference: {msg})")
        runs = []
        if cref:
            runs.append(("C", [cref, "cycles", namesfile, str(args.cycles)], env))
        runs.append(("capar", [sys.executable, __file__, "--child", namesfile, str(args.cycles)], env))
        if accelerated():
            runs.append(("capar_pure", [sys.executable, __file__, "--child", namesfile, str(args.cycles)],
                         {**env, "CAPAR_CORE": "0"}))
        try:
            for client, cmd, cenv in runs:
                p = subprocess.run(cmd, env=cenv, capture_output=True, text=True, timeout=60 * args.cycles)
                lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
                summarize(client, lines)
        finally:
            stop_strays(marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
