"""Job script: write a snapshot file back (bulk put, optional wait for completion, read-back check).

    python workers/restore.py snap.npz [--wait] [--timeout 5] [--processes K] [--dry-run]

Every PV that was read ok in the snapshot is written in one bulk put (``capar.Group.put``, or a
Coordinator's ``ShardedGroup`` with ``--processes``), read back on the same channels and compared with the
saved value.  Report on stdout, one line per PV: ``NAME ok VALUE``, ``NAME failed REASON`` or
``NAME skipped REASON`` (PVs saved with an error); the failures are listed again on stderr.
``--dry-run`` reads the live values and prints ``NAME would change OLD -> NEW`` lines without writing.
Exit status 0 all PVs restored, 1 some failed (PVs gone, write refused, read-back differs), 2 bad file.
"""
import argparse
import sys

import numpy as np

import capar
from capar.snapshot import SnapshotFormatError


def short(v):
    if isinstance(v, np.ndarray):
        return repr(v.tolist()) if v.size <= 8 else f"array(len={v.size}, dtype={v.dtype})"
    return repr(v)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="exit status: 0 all restored, 1 some failed, 2 bad snapshot file")
    ap.add_argument("snapshot", help="snapshot file (.json, .csv, .npz) written by capar")
    ap.add_argument("--wait", action="store_true", help="wait for record processing to complete")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds: connection, puts, read-back")
    ap.add_argument("--processes", type=int, default=0, metavar="K", help="shard over K processes (Coordinator)")
    ap.add_argument("--dry-run", action="store_true", help="only print what would change")
    ap.add_argument("--atol", type=float, default=0.0, help="absolute tolerance of the read-back check")
    args = ap.parse_args(argv)
    try:
        saved = capar.Snapshot.load(args.snapshot)
    except SnapshotFormatError as exc:
        print(f"restore: {exc}", file=sys.stderr)
        return 2
    for i in np.flatnonzero(~saved.ok):
        print(f"{saved.names[i]} skipped saved with error: {saved.error[i]}")
    want = saved.take(np.flatnonzero(saved.ok))
    names = [str(n) for n in want.names]
    values = want.values.tolist()
    if not names:
        print(f"restore: {args.snapshot}: no value to restore", file=sys.stderr)
        return 0
    coord = capar.Coordinator(args.processes) if args.processes else None
    failed = []
    try:
        if args.dry_run:
            live = (coord.get(names, timeout=args.timeout, connection_timeout=args.timeout) if coord else
                    capar.acquire(names, timeout=args.timeout, connection_timeout=args.timeout))
            for old_new in live.diff(want, atol=args.atol).changed:
                print(f"{old_new[0]} would change {short(old_new[1])} -> {short(old_new[2])}")
            failed = live.failed
        else:
            group = (coord.connect(names, connection_timeout=args.timeout) if coord else
                     capar.Group(names, form="time", connection_timeout=args.timeout))
            with group:
                res = group.put(values, wait=args.wait, timeout=args.timeout)
                back = group.get(timeout=args.timeout)
            differs = {n: new for n, _, new in want.diff(back, atol=args.atol).changed}
            for k, name in enumerate(names):
                v = values[k]
                empty = isinstance(v, np.ndarray) and v.size == 0  # CA cannot write 0 elements
                if not res.ok[k] and not (empty and back.ok[k] and name not in differs):
                    err = "cannot write an empty array" if empty else res.error[k]
                elif not back.ok[k]:
                    err = f"read-back failed: {back.error[k]}"
                elif name in differs:
                    err = f"read-back {short(differs[name])} != saved {short(v)}"
                else:
                    print(f"{name} ok {short(v)}")
                    continue
                failed.append((name, err))
                print(f"{name} failed {err}")
    except KeyboardInterrupt:
        print("restore: interrupted", file=sys.stderr)
        return 130
    finally:
        if coord is not None:
            coord.close()
    for name, err in failed:
        print(f"{name}: {err}", file=sys.stderr)
    action = "checked" if args.dry_run else "restored"
    print(f"{action} {len(names) - len(failed)} of {len(names)} PVs from {args.snapshot}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
