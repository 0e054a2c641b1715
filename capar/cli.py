"""``capar`` command line: get, put, info, monitor, snapshot, restore, diff, ioc.

Flags follow EPICS base tools where they overlap (``-w`` timeout seconds, ``-a`` time/alarm columns,
``-n`` enums as numbers, ``-S`` char arrays as text).  PV names come from the arguments, ``-f FILE`` (one or
more names per line, ``#`` comments) and ``-r FILE.req`` (autosave request file, macros from ``-m``).

Exit status: 0 all PVs ok, 1 some PVs failed (listed on stderr as ``NAME: reason``), 2 usage error (bad
flag or subcommand, missing or malformed file: one line naming file and line), 130 on Ctrl-C (143 on
SIGTERM).  Every file written (snapshots, text output) is written to a temporary file and renamed.
"""
from __future__ import annotations

import argparse
import atexit
import math
import os
import signal
import sys
import tempfile
import time
from typing import Any, Optional

__all__ = ["main", "build_parser"]

DEFAULT_CHUNK = 1000  # PVs per step when a progress bar is shown

_STAT = ("NO_ALARM", "READ", "WRITE", "HIHI", "HIGH", "LOLO", "LOW", "STATE", "COS", "COMM", "TIMEOUT",
         "HWLIMIT", "CALC", "SCAN", "LINK", "SOFT", "BAD_SUB", "UDF", "DISABLE", "SIMM", "READ_ACCESS",
         "WRITE_ACCESS")
_SEVR = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")


class UsageError(Exception):
    """Bad command line or input file: one line on stderr, exit status 2."""


class _Terminated(BaseException):
    """SIGTERM: unwinds like KeyboardInterrupt (temporary files removed), exit status 143."""


# --------------------------------------------------------------------------------------------------
# input: names

def _names(args: argparse.Namespace) -> list[str]:
    names = list(getattr(args, "pvs", None) or [])
    path = getattr(args, "file", None)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    names.extend(line.split("#", 1)[0].split())
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror}") from None
    req = getattr(args, "request", None)
    if req:
        from .request import parse_macros, read_request

        macros = parse_macros(args.macros or [], file="-m")
        names.extend(read_request(req, macros))
    elif getattr(args, "macros", None):
        raise UsageError("-m macros need a request file (-r FILE)")
    if not names:
        raise UsageError("no PV names given (arguments, -f FILE or -r FILE.req)")
    return names


# --------------------------------------------------------------------------------------------------
# output helpers

def _atomic_write(path: str, data: bytes) -> None:
    """Write *data* to *path* through a temporary file in the same directory and a rename."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".capar-", suffix=".tmp", dir=d)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fmt(v: Any) -> str:
    """caget style: scalars as they are, arrays and string lists as 'count v1 v2 ...'."""
    import numpy as np

    if isinstance(v, np.ndarray):
        return f"{v.size} " + " ".join(str(x) for x in v.tolist()) if v.size else "0"
    if isinstance(v, (list, tuple)):
        return f"{len(v)} " + " ".join(str(x) for x in v) if v else "0"
    return str(v)


def _short(v: Any, limit: int = 8) -> str:
    """A value for diff lines: small arrays in full, large ones summarised."""
    import numpy as np

    if isinstance(v, np.ndarray):
        if v.size <= limit:
            return "[" + ", ".join(repr(x) for x in v.tolist()) + "]"
        return f"array(len={v.size}, dtype={v.dtype})"
    if isinstance(v, (list, tuple)) and len(v) > limit:
        return f"list(len={len(v)})"
    return repr(v)


def _char_text(v: Any) -> str:
    import numpy as np

    raw = bytes(np.asarray(v).astype(np.uint8).tolist())
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _alarm(status: int, severity: int) -> str:
    st = _STAT[status] if 0 <= status < len(_STAT) else str(status)
    sv = _SEVR[severity] if 0 <= severity < len(_SEVR) else str(severity)
    return f"{st} {sv}"


def _enum_strings(names: list[str], timeout: float) -> dict[str, tuple]:
    """{name: enum strings} of the ENUM PVs among *names* (one bulk CTRL read)."""
    import capar

    names = list(dict.fromkeys(names))
    if not names:
        return {}
    snap = capar.acquire(names, form="ctrl", timeout=timeout, connection_timeout=timeout)
    strs = snap.ctrl.get("enum_strs")
    if strs is None:
        return {}
    return {str(n): s for n, s, ok in zip(snap.names, strs, snap.ok) if ok and s is not None}


def _is_int(v: Any) -> bool:
    import numpy as np

    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _display(name: str, v: Any, enum_strs: dict[str, tuple], as_text: bool) -> str:
    import numpy as np

    if _is_int(v) and name in enum_strs:
        strs = enum_strs[name]
        return strs[int(v)] if 0 <= int(v) < len(strs) else str(int(v))
    if as_text and isinstance(v, np.ndarray) and v.dtype.kind in "iu" and v.dtype.itemsize == 1:
        return _char_text(v)
    return _fmt(v)


def _report_failures(failed: list) -> int:
    for name, err in failed:
        print(f"{name}: {err}", file=sys.stderr)
    return 1 if failed else 0


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str) -> Any:
    """A tqdm bar on stderr when stderr is a terminal and tqdm is installed, else a no-op object."""
    try:
        if not sys.stderr.isatty():
            return _NoBar()
    except (AttributeError, ValueError):
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="PV", file=sys.stderr, leave=False, dynamic_ncols=True)


def _steps(n: int, args: argparse.Namespace, bar: Any) -> list[tuple[int, int]]:
    """(start, stop) slices: one step, or chunks of --chunk PVs (default DEFAULT_CHUNK with a bar)."""
    chunk = getattr(args, "chunk", None) or (DEFAULT_CHUNK if not isinstance(bar, _NoBar) else 0)
    if not chunk or n <= chunk:
        return [(0, n)]
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


class _Reader:
    """Bulk reads through ``capar.acquire`` or, with --processes K, a ``capar.Coordinator(K)``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.timeout = args.w
        self.coord = None
        if getattr(args, "processes", None):
            import capar

            self.coord = capar.Coordinator(args.processes)

    def read(self, names: list[str]) -> Any:
        import capar

        if self.coord is not None:
            return self.coord.get(names, form="time", timeout=self.timeout, connection_timeout=self.timeout)
        return capar.acquire(names, form="time", timeout=self.timeout, connection_timeout=self.timeout)

    def group(self, names: list[str]) -> Any:
        """Channels kept for a put and its read-back (Group or ShardedGroup)."""
        import capar

        if self.coord is not None:
            return self.coord.connect(names, form="time", connection_timeout=self.timeout)
        return capar.Group(names, form="time", connection_timeout=self.timeout)

    def close(self) -> None:
        if self.coord is not None:
            self.coord.close()

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _concat(parts: list) -> Any:
    """One Snapshot from consecutive chunk Snapshots (time form, no ctrl columns)."""
    import numpy as np

    from .snapshot import Snapshot

    if len(parts) == 1:
        return parts[0]
    names = [str(n) for p in parts for n in p.names.tolist()]
    cat = {k: np.concatenate([getattr(p, k) for p in parts])
           for k in ("value", "values", "status", "severity", "timestamp", "ok", "error")}
    return Snapshot(names, form=parts[0].form, created=parts[0].created,
                    elapsed=float(sum(p.elapsed for p in parts)), **cat)


def _subset(snap: Any, idx: Any) -> Any:
    from .snapshot import Snapshot

    return Snapshot([str(n) for n in snap.names[idx].tolist()], snap.value[idx], snap.values[idx],
                    snap.status[idx], snap.severity[idx], snap.timestamp[idx], snap.ok[idx], snap.error[idx],
                    form=snap.form, created=snap.created)


def _read_many(names: list[str], args: argparse.Namespace, desc: str) -> Any:
    bar = _progress(len(names), desc)
    try:
        with _Reader(args) as reader:
            parts = []
            for a, b in _steps(len(names), args, bar):
                parts.append(reader.read(names[a:b]))
                bar.update(b - a)
        return _concat(parts)
    finally:
        bar.close()


def _load(path: str) -> Any:
    from .snapshot import Snapshot

    return Snapshot.load(path)


# --------------------------------------------------------------------------------------------------
# subcommands

def cmd_get(args: argparse.Namespace) -> int:
    import capar

    names = _names(args)
    with capar.Group(names, form="time", connection_timeout=args.w) as g:
        snap = g.get(timeout=args.w)
    enums = {} if args.n else _enum_strings(
        [str(snap.names[i]) for i in range(len(snap)) if snap.ok[i] and _is_int(snap.values[i])], args.w)
    for r in snap:
        if not r.ok:
            continue
        text = _display(r.name, r.value, enums, args.S)
        if args.a:
            from capar.pv import fmt_time  # only here: keeps `capar get` from importing the PV layer

            print(f"{r.name} {fmt_time(r.timestamp)} {text} {_alarm(r.status, r.severity)}")
        else:
            print(f"{r.name} {text}")
    return _report_failures(snap.failed)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _put_value(raw: list[str], native: int, nelm: int, args: argparse.Namespace) -> Any:
    from .ca import dbr

    def conv(s: str) -> Any:
        if native == dbr.ENUM:
            if s.strip().isdigit():
                return int(s)
            if args.n:
                raise UsageError(f"-n: enum value must be a number, not {s!r}")
        return s

    if native == dbr.CHAR and nelm > 1 and len(raw) == 1 and not args.a and (args.S or not _is_number(raw[0])):
        return raw[0]  # text into a char array
    vals = [conv(s) for s in raw]
    if len(vals) == 1 and not args.a and nelm <= 1:
        return vals[0]
    return vals


def cmd_put(args: argparse.Namespace) -> int:
    import capar
    from capar.ca import dbr

    raw = list(args.values)
    if args.a:
        try:
            count = int(raw[0])
        except ValueError:
            raise UsageError(f"-a: the first value must be the element count, not {raw[0]!r}") from None
        raw = raw[1:]
        if count != len(raw) or count < 1:
            raise UsageError(f"-a: count {count} but {len(raw)} values given")
    with capar.Group([args.pv], form="time", connection_timeout=args.w) as g:
        if len(g.unique) == 1 and g.connected[0]:
            value = _put_value(raw, dbr.native_type(int(g.ftype[0])), int(g.nelm[0]), args)
        else:
            value = raw[0] if len(raw) == 1 else raw  # not connected: put() reports why
        res = g.put([value], wait=args.wait, timeout=args.w)
        if not res.ok[0]:
            return _report_failures(res.failed)
        back = g.get(timeout=args.w)
    if not back.ok[0]:
        return _report_failures(back.failed)
    v = back.values[0]
    enums = {} if args.n or not _is_int(v) else _enum_strings([args.pv], args.w)
    print(f"{args.pv} {_display(args.pv, v, enums, args.S)}")
    return 0


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


def cmd_monitor(args: argparse.Namespace) -> int:
    import numpy as np

    import capar
    from capar.pv import fmt_time

    names = _names(args)
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be >= 1")
    seen: set[int] = set()
    reported: set[int] = set()
    events = 0
    out = sys.stdout
    with capar.Monitor(names, form="time", connection_timeout=args.w) as mon:
        # one CTRL read of the connected PVs: which are integers (printed as such), enum strings
        up = [i for i, c in enumerate(mon.connected.tolist()) if c]
        ints: set[int] = set()
        enums: dict[str, tuple] = {}
        if up:
            probe = capar.acquire([names[i] for i in up], form="ctrl", timeout=args.w,
                                  connection_timeout=args.w)
            ints = {up[k] for k in range(len(probe)) if probe.ok[k] and _is_int(probe.values[k])}
            strs = probe.ctrl.get("enum_strs")
            if not args.n and strs is not None:
                enums = {str(n): s for n, s, ok in zip(probe.names, strs, probe.ok) if ok and s is not None}
        end = time.monotonic() + args.seconds if args.seconds is not None else math.inf
        while events < (args.count or math.inf):
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            batch = mon.get_batch(timeout=min(remaining, 0.5))
            if batch is None:
                continue
            lines = []
            for k in range(len(batch)):
                i = int(batch.index[k])
                kind = int(batch.kind[k])
                name = names[i]
                if kind == 1:
                    seen.add(i)
                    continue
                if kind == 2:
                    if i in seen:
                        lines.append(f"{name} {fmt_time(float(batch.timestamp[k]))} <disconnected>")
                    elif i not in reported:  # never connected: say so now, not only at the end
                        reported.add(i)
                        print(f"{name}: not connected", file=sys.stderr)
                    continue
                v: Any = batch.values[k] if batch.values is not None else batch.value[k]
                if isinstance(v, (float, np.floating)) and i in ints and math.isfinite(v):
                    v = int(v)
                elif isinstance(v, np.floating):
                    v = float(v)
                text = _display(name, v, enums, args.S)
                line = f"{name} {fmt_time(float(batch.timestamp[k]))} {text}"
                if int(batch.severity[k]) > 0:
                    line += " " + _alarm(int(batch.status[k]), int(batch.severity[k]))
                lines.append(line)
                events += 1
                if args.count is not None and events >= args.count:
                    break
            if lines:
                out.write("\n".join(lines) + "\n")
                out.flush()
            if batch.overflow:
                print(f"capar: {batch.overflow} events dropped (queue full)", file=sys.stderr)
        connected = mon.connected
    never = [i for i in range(len(names)) if i not in seen and not connected[i]]
    _report_failures([(names[i], "not connected") for i in never if i not in reported])
    return 1 if never else 0


_FORMATS = ("text", "json", "csv", "npz")


def _output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output:
        ext = os.path.splitext(args.output)[1].lower().lstrip(".")
        if ext == "txt":
            return "text"
        if ext not in _FORMATS:
            raise UsageError(f"{args.output}: cannot tell the format from the suffix "
                             "(use .json, .csv, .npz, .txt or --format)")
        return ext
    return "text"


def _snapshot_text(snap: Any) -> str:
    return "".join(f"{r.name} {_fmt(r.value) if r.ok else '<' + str(r.error) + '>'}\n" for r in snap)


def cmd_snapshot(args: argparse.Namespace) -> int:
    fmt = _output_format(args)
    if fmt == "npz" and not args.output and sys.stdout.isatty():
        raise UsageError("refusing to write NPZ (binary) to a terminal: use -o FILE.npz or a pipe")
    names = _names(args)
    t0 = time.perf_counter()
    snap = _read_many(names, args, "snapshot")
    dt = time.perf_counter() - t0
    if args.output:
        try:
            if fmt == "text":
                _atomic_write(args.output, _snapshot_text(snap).encode("utf-8"))
            else:
                snap.save(args.output, format=fmt)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"{len(snap)} PVs, {snap.n_ok} ok, {dt:.3f} s -> {args.output}")
    elif fmt == "json":
        sys.stdout.write(snap.to_json())
    elif fmt == "csv":
        sys.stdout.write(snap.to_csv())
    elif fmt == "npz":
        with tempfile.TemporaryDirectory(prefix="capar-") as d:
            path = snap.save(os.path.join(d, "snapshot.npz"))
            with open(path, "rb") as fh:
                sys.stdout.flush()
                sys.stdout.buffer.write(fh.read())
                sys.stdout.buffer.flush()
    else:
        sys.stdout.write(_snapshot_text(snap))
    return _report_failures(snap.failed)


def cmd_restore(args: argparse.Namespace) -> int:
    import numpy as np

    saved = _load(args.snapshot)
    todo = np.flatnonzero(saved.ok)
    for i in np.flatnonzero(~saved.ok).tolist():
        print(f"{saved.names[i]} skipped (saved with error: {saved.error[i]})")
    if todo.size == 0:
        print(f"capar: {args.snapshot}: no value to restore", file=sys.stderr)
        return 0
    want = _subset(saved, todo)
    names = [str(n) for n in want.names.tolist()]
    if args.dry_run:
        return _dry_run(want, names, args)
    failed: list[tuple[str, str]] = []
    n_ok = 0
    bar = _progress(len(names), "restore")
    try:
        with _Reader(args) as reader:
            for a, b in _steps(len(names), args, bar):
                part = _subset(want, np.arange(a, b))
                values = part.values.tolist()
                with reader.group(names[a:b]) as g:
                    res = g.put(values, wait=args.wait, timeout=args.w)
                    back = g.get(timeout=args.w)
                diff = part.diff(back, rtol=args.rtol, atol=args.atol)
                changed = {n: new for n, _, new in diff.changed}
                for k in range(b - a):
                    name, v = names[a + k], values[k]
                    empty = isinstance(v, np.ndarray) and v.size == 0
                    if not res.ok[k] and not (empty and back.ok[k] and name not in changed):
                        reason = "cannot write an empty array" if empty else res.error[k]
                        failed.append((name, reason))
                    elif not back.ok[k]:
                        failed.append((name, f"read-back failed: {back.error[k]}"))
                    elif name in changed:
                        failed.append((name, f"read-back {_short(changed[name])} != saved {_short(v)}"))
                    else:
                        n_ok += 1
                        print(f"{name} ok {_short(v)}")
                sys.stdout.flush()
                bar.update(b - a)
    finally:
        bar.close()
    print(f"capar: restored {n_ok} of {len(names)} PVs from {args.snapshot}"
          + (f", {len(failed)} failed:" if failed else ""), file=sys.stderr)
    return _report_failures(failed)


def _dry_run(want: Any, names: list[str], args: argparse.Namespace) -> int:
    live = _read_many(names, args, "read")
    changed = {n: (old, new) for n, old, new in live.diff(want, rtol=args.rtol, atol=args.atol).changed}
    for r in live:
        if r.ok and r.name in changed:
            old, new = changed[r.name]
            print(f"would write {r.name}: {_short(old)} -> {_short(new)}")
    print(f"capar: dry run: {len(changed)} of {len(names)} PVs would change, nothing written", file=sys.stderr)
    return _report_failures(live.failed)


def cmd_diff(args: argparse.Namespace) -> int:
    a = _load(args.a)
    if args.b:
        b = _load(args.b)
    else:
        names = list(dict.fromkeys(str(n) for n in a.names.tolist()))
        if not names:
            print("no differences")
            return 0
        b = _read_many(names, args, "read")
    d = a.diff(b, rtol=args.rtol, atol=args.atol)
    for n, old, new in d.changed:
        print(f"changed {n}: {_short(old)} -> {_short(new)}")
    for n in d.missing:
        print(f"missing {n}")
    for n in d.added:
        print(f"added {n}")
    if not d:
        print("no differences")
    return 1 if d else 0


def cmd_ioc(args: argparse.Namespace) -> int:
    from . import testing

    argv = ["--pvs", str(args.pvs)]
    if args.prefix:
        argv += ["--prefix", args.prefix]
    if args.port:
        argv += ["--port", str(args.port)]
    # testing.main stops on SIGINT and SIGTERM alike; the wakeup fd tells which one it was
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    old = signal.set_wakeup_fd(w)
    try:
        rc = testing.main(argv)
    finally:
        signal.set_wakeup_fd(old)
        try:
            got = os.read(r, 1024)
        except BlockingIOError:
            got = b""
        os.close(r)
        os.close(w)
    if rc == 0 and signal.SIGINT in got:
        return 130
    if rc == 0 and signal.SIGTERM in got:
        return 143
    return rc


# --------------------------------------------------------------------------------------------------
# parser

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="capar", description="EPICS Channel Access at scale.",
                 epilog="exit status: 0 all PVs ok, 1 some PVs failed (listed on stderr), 2 usage error, "
                        "130 interrupted")
    from ._version import __version__

    ap.add_argument("--version", action="version", version=f"capar {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def timeout(p: argparse.ArgumentParser, default: float = 5.0) -> None:
        p.add_argument("-w", type=float, default=default, metavar="SEC",
                       help=f"timeout in seconds: connection, read, put completion (default {default:g})")

    def sources(p: argparse.ArgumentParser) -> None:
        p.add_argument("pvs", nargs="*", metavar="PV", help="PV names")
        p.add_argument("-f", "--file", metavar="FILE", help="file with PV names (one or more per line, # comments)")
        p.add_argument("-r", "--request", metavar="FILE.req",
                       help="autosave request file (macros $(P), includes 'file other.req P=...')")
        p.add_argument("-m", "--macros", action="append", metavar="P=...,Q=...",
                       help="macros for the request file (repeatable)")

    def bulk(p: argparse.ArgumentParser) -> None:
        p.add_argument("--processes", type=_positive_int, metavar="K",
                       help="shard the reads/writes over K worker processes (capar.Coordinator)")
        p.add_argument("--chunk", type=_positive_int, metavar="N",
                       help=f"work N PVs at a time (default {DEFAULT_CHUNK} when a progress bar is shown, "
                            "else all at once); -w applies to each chunk")

    def tolerance(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default 0)")
        p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for numbers (default 0)")

    p = sub.add_parser("get", help="read PVs (caget)", description="Read PVs and print 'NAME VALUE' lines.")
    timeout(p)
    sources(p)
    p.add_argument("-a", action="store_true", help="add timestamp, alarm status and severity")
    p.add_argument("-n", action="store_true", help="enums as numbers")
    p.add_argument("-S", action="store_true", help="char arrays as text")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("put", help="write one PV (caput)",
                       description="Write VALUE (several values: an array) and print 'NAME NEWVALUE'.")
    timeout(p)
    p.add_argument("-c", "--wait", action="store_true", help="wait for processing to complete")
    p.add_argument("-a", action="store_true", help="array: the first value is the element count (caput -a)")
    p.add_argument("-n", action="store_true", help="enums as numbers")
    p.add_argument("-S", action="store_true", help="write a char array PV from text")
    p.add_argument("pv", metavar="PV")
    p.add_argument("values", nargs="+", metavar="VALUE")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("info", help="describe PVs (cainfo)")
    timeout(p)
    sources(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("monitor", help="print changes (camonitor)",
                       description="Print 'NAME TIMESTAMP VALUE' for every change until Ctrl-C, --count or "
                                   "--seconds.")
    timeout(p)
    sources(p)
    p.add_argument("--count", type=int, metavar="N", help="stop after N value events")
    p.add_argument("--seconds", type=float, metavar="T", help="stop after T seconds")
    p.add_argument("-n", action="store_true", help="enums as numbers")
    p.add_argument("-S", action="store_true", help="char arrays as text")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("snapshot", help="read PVs into a snapshot file or stdout",
                       description="Read every PV once (bulk) and write a snapshot.")
    timeout(p)
    sources(p)
    bulk(p)
    p.add_argument("-o", "--output", metavar="FILE", help="output file (.json, .csv, .npz, .txt)")
    p.add_argument("--format", choices=_FORMATS, help="output format (default: from -o, else text)")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("restore", help="write the values of a snapshot file back",
                       description="Put every ok value of SNAPSHOT, read it back and compare; one line per "
                                   "PV ('NAME ok VALUE' on stdout, 'NAME: reason' on stderr for failures).")
    timeout(p)
    bulk(p)
    tolerance(p)
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot file (.json, .csv, .npz)")
    p.add_argument("-c", "--wait", action="store_true", help="wait for processing to complete")
    p.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("diff", help="compare two snapshot files, or one with the live values",
                       description="Exit status 0: no differences, 1: differences (or PVs unreadable).")
    timeout(p)
    bulk(p)
    tolerance(p)
    p.add_argument("a", metavar="SNAPSHOT")
    p.add_argument("b", metavar="OTHER", nargs="?", help="second snapshot (default: live values)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("ioc", help="run the demo IOC on loopback and print the EPICS_CA_* exports")
    p.add_argument("--pvs", type=int, default=100, help="number of PVs PREFIX s0..s{N-1} (default 100)")
    p.add_argument("--prefix", default=None, help="PV name prefix (default: random DEMOxxxxxx:)")
    p.add_argument("--port", type=int, default=None, help="CA server port (default: a free one)")
    p.set_defaults(func=cmd_ioc)
    return ap


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {v}")
    return v


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``capar`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        old = None
        if args.func is not cmd_ioc:
            try:
                old = signal.signal(signal.SIGTERM, _on_sigterm)
            except ValueError:  # not the main thread (main() called from a thread)
                old = None
        try:
            return int(args.func(args) or 0)
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
    except UsageError as exc:
        print(f"capar: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # RequestFileError, SnapshotFormatError: "FILE:LINE: reason"
        from .request import RequestFileError
        from .snapshot import SnapshotFormatError

        if isinstance(exc, (RequestFileError, SnapshotFormatError)):
            print(f"capar: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("capar: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("capar: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # e.g. `capar monitor ... | head`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 1


def run() -> None:
    """The ``capar`` console script: :func:`main`, then a quick exit with its status.

    stdout and stderr are flushed and the ``atexit`` handlers run (capar's CA shutdown, multiprocessing's
    and logging's among them), then the process ends with ``os._exit``: the interpreter's module
    teardown, about 20 ms with numpy loaded, buys a command-line run nothing.  Call :func:`main` to run a
    command in-process.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the descriptor closed (`capar get PV >&-`)
            continue
        try:
            stream.flush()
        except BrokenPipeError:  # the reader left: `capar get ... | head -0`
            code = code or 1
        except (OSError, ValueError):
            pass
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None:  # not CPython: exit the ordinary way
        sys.exit(code)
    run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    run()
