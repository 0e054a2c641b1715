"""Job script: snapshot thousands of PVs (a names file or an autosave .req file) into a .json/.csv/.npz file.

    python workers/snapshot.py names.txt out.npz [--timeout 5] [--processes K]
    python workers/snapshot.py ioc.req out.npz -m P=IOC1:,N=2

The names file has one PV per line and ``#`` comments; it may use autosave request-file syntax
(``$(P)`` macros from ``-m``, ``file other.req P=...`` includes).  The output is written atomically
(temporary file + rename).  Exit status 0 when every PV was read, 1 when some failed (listed on stderr),
2 for a missing or malformed names file (one line naming file and line), 130 on Ctrl-C.
"""
import argparse
import sys
import time

import capar
from capar.request import RequestFileError, read_names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="exit status: 0 all PVs read, 1 some failed, 2 bad input file")
    ap.add_argument("names", help="PV names file or autosave request file (.req)")
    ap.add_argument("out", help="output file: .json, .csv or .npz")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds (connection, then read)")
    ap.add_argument("--processes", type=int, default=0, metavar="K",
                    help="shard the read over K worker processes (capar.Coordinator); default: one process")
    ap.add_argument("-m", "--macros", action="append", default=[], metavar="P=...,Q=...",
                    help="macros for the names/request file (repeatable)")
    args = ap.parse_args(argv)
    if not args.out.lower().endswith((".json", ".csv", ".npz")):
        ap.error(f"cannot tell the format of {args.out!r}: use .json, .csv or .npz")
    if args.processes < 0:
        ap.error("--processes must be >= 0")
    try:
        names = read_names(args.names, args.macros)
    except RequestFileError as exc:
        print(f"snapshot: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        if args.processes:
            with capar.Coordinator(args.processes) as coord:
                snap = coord.get(names, timeout=args.timeout, connection_timeout=args.timeout)
        else:
            snap = capar.acquire(names, timeout=args.timeout, connection_timeout=args.timeout)
        snap.save(args.out)
    except KeyboardInterrupt:
        print("snapshot: interrupted, nothing written", file=sys.stderr)
        return 130
    for name, err in snap.failed:
        print(f"{name}: {err}", file=sys.stderr)
    print(f"{len(snap)} PVs, {snap.n_ok} ok, {time.perf_counter() - t0:.3f} s -> {args.out}")
    return 0 if snap.ok.all() else 1


if __name__ == "__main__":
    sys.exit(main())
