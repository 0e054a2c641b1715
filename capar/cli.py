"""``capar`` command line: get, put, info, snapshot, ioc.

Flags follow EPICS base tools where they overlap (``-w`` timeout seconds, ``-a`` time/alarm columns,
``-n`` enums as numbers, ``-S`` char arrays as text).  Exit status: 0 all PVs ok, 1 some PVs failed
(listed on stderr), 2 usage error.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

__all__ = ["main"]


def _names(args: argparse.Namespace) -> list[str]:
    names = list(args.pvs)
    if getattr(args, "file", None):
        try:
            with open(args.file, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    line = line.split("#", 1)[0].strip()
                    if line:
                        names.extend(line.split())
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(_usage_error(f"{args.file}: {exc}"))
    if not names:
        raise SystemExit(_usage_error("no PV names given"))
    return names


def _usage_error(msg: str) -> int:
    print(f"capar: {msg}", file=sys.stderr)
    return 2


def _fmt(v: object) -> str:
    import numpy as np

    if isinstance(v, np.ndarray):
        return f"{v.size} " + " ".join(str(x) for x in v.tolist())
    if isinstance(v, list):
        return f"{len(v)} " + " ".join(v)
    return str(v)


def _report_failures(failed: list) -> int:
    for name, err in failed:
        print(f"{name}: {err}", file=sys.stderr)
    return 1 if failed else 0


def cmd_get(args: argparse.Namespace) -> int:
    import capar

    names = _names(args)
    snap = capar.acquire(names, form="time", timeout=args.w, connection_timeout=args.w,
                         as_string=not args.n or args.S)
    for r in snap:
        if not r.ok:
            continue
        line = f"{r.name} {_fmt(r.value)}"
        if args.a:
            from capar.pv import fmt_time

            line = f"{r.name} {fmt_time(r.timestamp)} {_fmt(r.value)} sev={r.severity} stat={r.status}"
        print(line)
    return _report_failures(snap.failed)


def cmd_put(args: argparse.Namespace) -> int:
    from capar.bulk import Group

    with Group([args.pv], connection_timeout=args.w) as g:
        value: object = args.values[0] if len(args.values) == 1 else args.values
        res = g.put([value], wait=args.wait, timeout=args.w if args.wait else 5.0)
        if res.ok.all():
            print(f"{args.pv} {_fmt(g.get(timeout=args.w).values[0])}")
    return _report_failures(res.failed)


def cmd_info(args: argparse.Namespace) -> int:
    import capar

    failed = []
    for name in _names(args):
        text = capar.cainfo(name, print_out=False, timeout=args.w, connection_timeout=args.w)
        if text is None:
            failed.append((name, "not connected"))
        else:
            print(text)
    return _report_failures(failed)


def cmd_snapshot(args: argparse.Namespace) -> int:
    import capar

    names = _names(args)
    t0 = time.perf_counter()
    snap = capar.acquire(names, form="time", timeout=args.w, connection_timeout=args.w)
    if args.output:
        snap.save(args.output, format=args.format)
        print(f"{len(snap)} PVs, {snap.n_ok} ok, {time.perf_counter() - t0:.3f} s -> {args.output}")
    else:
        fmt = args.format or "text"
        if fmt == "json":
            sys.stdout.write(snap.to_json())
        elif fmt == "csv":
            sys.stdout.write(snap.to_csv())
        else:
            for r in snap:
                print(f"{r.name} {_fmt(r.value) if r.ok else '<' + str(r.error) + '>'}")
    return _report_failures(snap.failed)


def cmd_ioc(args: argparse.Namespace) -> int:
    from capar import testing

    argv = ["--pvs", str(args.pvs)] + (["--prefix", args.prefix] if args.prefix else [])
    return testing.main(argv)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="capar", description="EPICS Channel Access at scale")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, many: bool = True) -> None:
        p.add_argument("-w", type=float, default=5.0, metavar="SEC", help="timeout in seconds (default 5)")
        if many:
            p.add_argument("-f", "--file", help="file with one PV name per line")
            p.add_argument("pvs", nargs="*", help="PV names")

    p = sub.add_parser("get", help="read PVs")
    common(p)
    p.add_argument("-a", action="store_true", help="show timestamp, severity and status")
    p.add_argument("-n", action="store_true", help="enums as numbers")
    p.add_argument("-S", action="store_true", help="char arrays as text")
    p.set_defaults(func=cmd_get)
    p = sub.add_parser("put", help="write one PV")
    common(p, many=False)
    p.add_argument("--wait", "-c", action="store_true", help="wait for processing to complete")
    p.add_argument("pv")
    p.add_argument("values", nargs="+")
    p.set_defaults(func=cmd_put)
    p = sub.add_parser("info", help="describe PVs")
    common(p)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("snapshot", help="read PVs into a snapshot file or stdout")
    common(p)
    p.add_argument("-o", "--output", help="file (.json, .csv, .npz)")
    p.add_argument("--format", choices=["text", "json", "csv", "npz"])
    p.set_defaults(func=cmd_snapshot)
    p = sub.add_parser("ioc", help="run the demo IOC on loopback and print the EPICS_CA_* exports")
    p.add_argument("--pvs", type=int, default=100)
    p.add_argument("--prefix", default=None)
    p.set_defaults(func=cmd_ioc)
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``capar`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
