"""Job script: snapshot thousands of PVs (names file, one per line) into a .json/.csv/.npz file.

    python workers/snapshot.py names.txt out.npz [--timeout 5]
Exit status 0 when every PV was read, 1 when some failed (listed on stderr).
"""
import argparse
import sys

import capar


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names")
    ap.add_argument("out")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds (connection and read)")
    args = ap.parse_args(argv)
    with open(args.names, encoding="utf-8") as fh:
        names = [ln.split("#", 1)[0].strip() for ln in fh if ln.split("#", 1)[0].strip()]
    snap = capar.acquire(names, timeout=args.timeout, connection_timeout=args.timeout)
    snap.save(args.out)
    for name, err in snap.failed:
        print(f"{name}: {err}", file=sys.stderr)
    print(f"{len(snap)} PVs, {snap.n_ok} ok -> {args.out}")
    return 0 if snap.ok.all() else 1


if __name__ == "__main__":
    sys.exit(main())
