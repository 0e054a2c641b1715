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
import re
import signal
import sys
import tempfile
import time
from typing import Any, Callable, Optional

__all__ = ["main", "build_parser"]

DEFAULT_CHUNK = 1000  # PVs per step when a progress bar is shown

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


def _read_many(names: list[str], args: argparse.Namespace, desc: str) -> Any:
    bar = _progress(len(names), desc)
    try:
        with _Reader(args) as reader:
            parts = []
            for a, b in _steps(len(names), args, bar):
                parts.append(reader.read(names[a:b]))
                bar.update(b - a)
        from .snapshot import Snapshot

        return Snapshot.concat(parts)
    finally:
        bar.close()


def _load(path: str) -> Any:
    from .snapshot import Snapshot

    return Snapshot.load(path)


# --------------------------------------------------------------------------------------------------
# subcommands

def _tool_format(args: argparse.Namespace) -> Any:
    """The EPICS tools' value format from the -F, -e/-f/-g, -0x/-lx, -n and -S options."""
    from .catools import ToolFormat

    float_format = "%g"
    digits = getattr(args, "float_digits", None)
    if digits is not None:  # None also when the tools would have ignored the option
        kind, n = digits
        float_format = f"%-.{n}{kind}"
    bases = {"x": "hex", "o": "oct", "b": "bin"}
    return ToolFormat(sep=args.F, float_format=float_format,
                      int_base=bases.get(getattr(args, "int_base", None) or "", "dec"),
                      float_base=bases.get(getattr(args, "long_base", None) or "", "dec"),
                      enum_as_nr=bool(getattr(args, "n", False)), char_as_str=bool(getattr(args, "S", False)))


class _Reads:
    """One bulk read of PVs for the tools: values and alarm columns plus native type, NELM and enum strings."""

    def __init__(self, names: list[str], timeout: float, count: Optional[int] = None,
                 enum_strings: bool = True) -> None:
        import capar

        with capar.Group(names, form="time", connection_timeout=timeout) as g:
            self.snap = g.get(timeout=timeout)
            self.natives = g.native_types()
            self.nelms = g.element_counts()
        from .catools import ENUM

        self.enums: dict[str, tuple] = {}
        enum_names = [n for n, t, ok in zip(names, self.natives, self.snap.ok) if ok and t == ENUM]
        if enum_strings and enum_names:
            self.enums = _enum_strings(enum_names, timeout)


def _server_strings(names: list[str], counts: list[Optional[int]], timeout: float) -> dict[str, Any]:
    """``-s``: the values of these (float) PVs as the server formats them (DBR_STRING, its precision)."""
    from .ca import channel

    out: dict[str, Any] = {}
    chans = [channel.create_channel(n) for n in names]
    for name, ch, count in zip(names, chans, counts):
        if channel.connect_channel(ch, timeout=timeout):
            v = channel.get(ch, ftype=0, count=count, timeout=timeout)
            if v is not None:
                out[name] = v
    for ch in chans:
        channel.clear_channel(ch)
    return out


def _get_count(args: argparse.Namespace, nelm: int) -> Optional[int]:
    """Elements caget asks for: all NELM (zero-padded past the current length) unless -c (the current
    length) or -# N (the first N)."""
    if args.count:
        return min(args.count, nelm) if nelm else args.count
    return None if args.c else nelm


def cmd_get(args: argparse.Namespace) -> int:
    from .catools import DOUBLE, FLOAT, STRING, time_text

    names = _names(args)
    if args.d is not None:
        return _get_dbr(names, args)
    fmt = _tool_format(args)
    reads = _Reads(names, args.w, enum_strings=not args.n)
    snap = reads.snap
    natives = list(reads.natives)
    values = list(snap.values.tolist())
    if args.s:  # floating point as the server formats it
        idx = [i for i in range(len(names)) if snap.ok[i] and natives[i] in (FLOAT, DOUBLE)]
        texts = _server_strings([names[i] for i in idx], [_get_count(args, reads.nelms[i]) for i in idx], args.w)
        for i in idx:
            if names[i] in texts:
                values[i], natives[i] = texts[names[i]], STRING
    lines = []
    for i, name in enumerate(names):
        if not snap.ok[i]:
            continue
        count = _get_count(args, reads.nelms[i])
        v = values[i]
        shown = fmt.values(v, natives[i], count, reads.enums.get(name), counted=bool(args.count))
        n_el = count if count is not None else (len(v) if hasattr(v, "__len__") and not isinstance(v, str) else 1)
        if args.t:
            lines.append(shown)
        elif args.a:
            ns = int(snap.stamp_ns[i]) if snap.stamp_ns is not None else None
            lines.append(f"{fmt.name(name, n_el)}{fmt.sep}{time_text(float(snap.timestamp[i]), ns)}"
                         f"{_wide_values(shown, fmt.sep, n_el)}{fmt.alarm(int(snap.status[i]), int(snap.severity[i]))}")
        else:
            lines.append(f"{fmt.name(name, n_el)}{fmt.sep}{shown}")
    if lines:
        print("\n".join(lines))
    return _report_failures(snap.failed)


def _wide_values(shown: str, sep: str, n_elements: int) -> str:
    """The value part of a wide line with its separator: print_time_val_sts writes ``<sep>N`` (arrays) then
    ``<sep>v`` per element, so zero elements print no value at all (and a count with no separator after it)."""
    if n_elements == 0:
        return sep + shown[:-len(sep)] if shown.endswith(sep) else (sep + shown if shown else "")
    return sep + shown


def _get_dbr(names: list[str], args: argparse.Namespace) -> int:
    """``caget -d TYPE``: the value in that DBR type, then the type's extra fields, one block per PV."""
    from .ca import channel
    from .catools import (
        CHAR, DOUBLE, ENUM, FLOAT, STRING, dbf_text, dbr_text, epics_ns, sevr_text, stat_text, time_text,
    )

    fmt = _tool_format(args)
    dbr = args.d
    base = dbr % 7 if dbr < 35 else STRING
    failed = []
    for name in names:
        ch = channel.create_channel(name)
        try:
            if not channel.connect_channel(ch, timeout=args.w):
                failed.append((name, "not connected"))
                continue
            native = channel.field_type(ch)
            nelm = channel.element_count(ch)
            count = _get_count(args, nelm)
            md = channel.get_with_metadata(ch, ftype=dbr, count=count, timeout=args.w, as_numpy=True)
            if md is None:
                failed.append((name, "no data (timeout)"))
                continue
        finally:
            channel.clear_channel(ch)
        value = md["value"]
        n = count if count is not None else (len(value) if hasattr(value, "__len__") and not isinstance(value, str)
                                              else 1)
        strs = md.get("enum_strs") if dbr >= 21 else None
        if fmt.char_as_str and base == CHAR and (args.count or n > 1):
            shown = fmt.values(value, base, count, None)
        elif base == ENUM and strs is not None and not fmt.enum_as_nr:  # tool_lib.c's GR/CTRL enum text
            idx = [int(x) for x in (value.tolist() if hasattr(value, "tolist") else
                                    (value if isinstance(value, (list, tuple)) else [value]))]
            idx = (idx + [0] * max(0, (count or 0) - len(idx)))[:count] if count is not None else idx
            shown = fmt.sep.join("Illegal Value (%d)" % i if i >= 16 else "Enum Index Overflow (%d)" % i
                                 if i >= len(strs) else strs[i] for i in idx)
        else:
            items = fmt.values(value, base, count, strs, counted=True)
            shown = items.split(fmt.sep, 1)[1] if fmt.sep in items else ""
        out = [name, f"    Native data type: {dbf_text(native)}", f"    Request type:     {dbr_text(dbr)}",
               f"    Element count:    {n}", f"    Value:            {shown}"]
        sts = [f"    Status:           {stat_text(md.get('status', 0))}",
               f"    Severity:         {sevr_text(md.get('severity', 0))}"]
        if 7 <= dbr < 14 or dbr in (21, 28):
            out += sts
        elif 14 <= dbr < 21:
            out += [f"    Timestamp:        {time_text(md.get('timestamp', float('nan')), epics_ns(md))}"] + sts
        elif dbr >= 21:
            if base == ENUM:
                enum_strs = md.get("enum_strs") or ()
                out += sts + [f"    Enums:            ({len(enum_strs):2d})"]
                out += [f"                      [{k:2d}] {s}" for k, s in enumerate(enum_strs)]
            else:
                number = "%g" if base in (FLOAT, DOUBLE) else "%8d"
                out += sts + [f"    Units:            {md.get('units', '')}"]
                if base in (FLOAT, DOUBLE):
                    out.append(f"    Precision:        {md.get('precision', 0)}")
                lims = [("Lo disp limit", "lower_disp_limit"), ("Hi disp limit", "upper_disp_limit"),
                        ("Lo alarm limit", "lower_alarm_limit"), ("Lo warn limit", "lower_warning_limit"),
                        ("Hi warn limit", "upper_warning_limit"), ("Hi alarm limit", "upper_alarm_limit")]
                if dbr >= 28:
                    lims += [("Lo ctrl limit", "lower_ctrl_limit"), ("Hi ctrl limit", "upper_ctrl_limit")]
                for label, key in lims:
                    x = md.get(key, 0)
                    text = number % (float(x) if base in (FLOAT, DOUBLE) else int(x))
                    out.append(f"    {label + ':':<18}{text}")
        print("\n".join(out))
    return _report_failures(failed)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _unescape(text: str) -> Any:
    """``epicsStrnRawFromEscaped``: the value arguments of caput may hold C escapes; the C string they give
    (up to a NUL), as text, or as bytes when it is not UTF-8 (``\\xff``)."""
    from .catools import c_unescape_raw

    raw = c_unescape_raw(text).split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _put_value(raw: list[str], native: int, nelm: int, args: argparse.Namespace,
               enum_strs: Optional[tuple]) -> Any:
    """The value caput writes: with -a one element per argument, else all arguments joined by spaces;
    ENUM values by state name first, then as an index (-n: index only, -s: name only)."""
    from .ca import dbr

    if native == dbr.ENUM:
        def conv(s: str) -> Any:
            s = _unescape(s)
            if not args.n and enum_strs and s in enum_strs:
                return enum_strs.index(s)
            if args.s and not args.n:
                raise UsageError(f"Enum string value '{s}' invalid.")
            try:
                return int(float(s))
            except ValueError:
                raise UsageError(f"Enum {'index' if args.n else 'string'} value '{s}' "
                                 f"{'is not a number' if args.n else 'invalid'}.") from None
        vals = [conv(s) for s in raw] if args.a else [conv(" ".join(raw))]
        return vals if args.a else vals[0]
    if native == dbr.STRING:  # caput copies into a 40-byte dbr_string_t: at most 39 bytes arrive
        vals = [_epics_str(_unescape(s)) for s in (raw if args.a else [" ".join(raw)])]
        return vals if args.a else vals[0]
    if args.a:
        return [_unescape(s) for s in raw]
    text = " ".join(raw)
    if native == dbr.CHAR and nelm > 1 and (args.S or not _is_number(text)):
        return _unescape(text)  # text into a char array (caput -S; capar also without -S when not a number)
    if native == dbr.CHAR and nelm > 1:
        return float(text)  # a number: element 0, as caput (which writes it as one DBR_STRING)
    return _unescape(text)


def _epics_str(value: Any) -> Any:
    """*value* cut to the 39 bytes of a dbr_string_t (bytes when the cut splits a UTF-8 character)."""
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) <= 39:
        return value
    raw = raw[:39]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def cmd_put(args: argparse.Namespace) -> int:
    from .catools import ENUM, time_text

    raw = list(args.values)
    if not raw:
        print("No value specified. ('caput -h' for help.)", file=sys.stderr)
        return 1
    if args.a:
        try:
            count = int(raw[0])
        except ValueError:
            raise UsageError(f"-a: the first value must be the element count, not {raw[0]!r}") from None
        raw = raw[1:]
        if count != len(raw) or count < 1:
            raise UsageError(f"-a: count {count} but {len(raw)} values given")
    import capar

    fmt = _tool_format(args)

    def show(snap: Any, native: int, nelm: int, enums: Optional[tuple]) -> str:
        count = min(args.count, nelm) if args.count else nelm
        shown = fmt.values(snap.values[0], native, count, enums, counted=bool(args.count))
        if args.t:
            return shown
        if args.l:
            ns = int(snap.stamp_ns[0]) if snap.stamp_ns is not None else None
            return (f"{fmt.name(args.pv, count)}{fmt.sep}{time_text(float(snap.timestamp[0]), ns)}"
                    f"{_wide_values(shown, fmt.sep, count)}{fmt.alarm(int(snap.status[0]), int(snap.severity[0]))}")
        return f"{fmt.name(args.pv, count)}{fmt.sep}{shown}"

    with capar.Group([args.pv], form="time", connection_timeout=args.w) as g:
        if not g.connected.all():
            return _report_failures([(args.pv, "not connected")])
        native, nelm = g.native_types()[0], g.element_counts()[0]
        enums = _enum_strings([args.pv], args.w).get(args.pv) if native == ENUM else None
        value = _put_value(raw, native, nelm, args, enums)
        if not args.t:
            old = g.get(timeout=args.w)
            if not old.ok[0]:
                return _report_failures(old.failed)
            print("Old : " + show(old, native, nelm, None if args.n else enums))
        res = g.put([value], wait=args.c, timeout=args.w, empty="zeros")
        if not res.ok[0]:
            return _report_failures(res.failed)
        back = g.get(timeout=args.w)
    if not back.ok[0]:
        return _report_failures(back.failed)
    print(("" if args.t else "New : ") + show(back, native, nelm, None if args.n else enums))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if args.s:  # libca's own report of the client context (level 0: the info, as cainfo)
        from .ca import surface

        surface.client_status(None, args.s)
        return 0
    names = _names(args)
    if args.verbose:
        import capar

        failed = []
        for name in names:
            text = capar.cainfo(name, print_out=False, timeout=args.w, connection_timeout=args.w)
            if text is None:
                failed.append((name, "not connected"))
            else:
                print(text)
        return _report_failures(failed)
    from .ca import channel
    from .catools import dbf_text, dbr_text

    chans = [channel.create_channel(n) for n in names]
    failed = []
    blocks = []
    deadline = time.monotonic() + args.w
    for name, ch in zip(names, chans):
        if not channel.connect_channel(ch, timeout=max(0.0, deadline - time.monotonic())):
            failed.append((name, "not connected"))
            continue
        native = channel.field_type(ch)
        blocks.append("\n".join([
            name, "    State:            connected", f"    Host:             {channel.host_name(ch)}",
            f"    Access:           {'' if channel.read_access(ch) else 'no '}read, "
            f"{'' if channel.write_access(ch) else 'no '}write",
            f"    Native data type: {dbf_text(native)}", f"    Request type:     {dbr_text(native)}",
            f"    Element count:    {channel.element_count(ch)}"]))
    for ch in chans:
        channel.clear_channel(ch)
    if blocks:
        print("\n".join(blocks))
    return _report_failures(failed)


def cmd_monitor(args: argparse.Namespace) -> int:
    import numpy as np

    import queue

    import capar
    from .catools import DOUBLE, FLOAT, STRING, epics_ns, time_text

    names = _names(args)
    if args.max_events is not None and args.max_events < 1:
        raise UsageError("--count must be >= 1")
    fmt = _tool_format(args)
    modes = args.t or "s"
    for ch in modes:
        if ch not in "scnriI":
            print(f"Invalid argument '{ch}' for option '-t' - ignored.", file=sys.stderr)
    server_ts, client_ts = "s" in modes, "c" in modes
    relative = "r" if "r" in modes else "i" if "i" in modes else "I" if "I" in modes else None
    seen: set[int] = set()
    reported: set[int] = set()
    events = 0
    out = sys.stdout
    start_client = time.time()
    first_server: Optional[float] = None
    prev: dict[Any, tuple[float, float]] = {}
    printed: set[int] = set()

    def stamp(i: int, server: float, server_ns: Optional[int] = None) -> str:
        nonlocal first_server
        client = time.time()
        if first_server is None:
            first_server = server
        parts = []
        absolute = relative is None or i not in printed
        if absolute:
            if server_ts:
                parts.append(time_text(server, server_ns))
            if client_ts:
                parts.append(f"({time_text(client)})")
        else:
            ref = {"r": (first_server, start_client), "i": prev.get(None, (server, client)),
                   "I": prev.get(i, (server, client))}[relative]
            if server_ts:
                parts.append("              %+12.6f" % (server - ref[0]))
            if client_ts:
                parts.append("              (%+12.6f)" % (client - ref[1]))
        printed.add(i)
        prev[None] = prev[i] = (server, client)
        return "".join(parts)

    count = args.count or None
    with capar.Monitor(names, form="time", connection_timeout=args.w, mask=args.m, count=count) as mon:
        conn_idx = [i for i, c in enumerate(mon.connected.tolist()) if c]
        reads = _Reads([names[i] for i in conn_idx], args.w, enum_strings=not args.n) if conn_idx else None
        info = {}
        if reads is not None:
            for k, name in enumerate(reads.snap.names.tolist()):
                info[name] = (reads.natives[k], reads.enums.get(name))
        # -s: floating point PVs subscribed as DBR_TIME_STRING, as camonitor does, so that the server formats
        # them (its precision); their value events come from these subscriptions, not from the Monitor
        as_text: "queue.Queue[tuple]" = queue.Queue()
        text_pvs: set[int] = set()
        text_subs: list[tuple] = []
        if args.s and reads is not None:
            from .ca import channel as _ch
            from .ca import dbr as _dbr

            for k, i in enumerate(conn_idx):
                if reads.natives[k] in (FLOAT, DOUBLE):
                    chid = _ch.create_channel(names[i], connect=True)
                    nelm = int(reads.nelms[k])
                    req = min(count, nelm) if count else 0
                    sub = _ch.create_subscription(
                        chid, ftype=_dbr.STRING, use_time=True, count=req, mask=args.m,
                        callback=lambda value=None, _i=i, **kw: as_text.put((_i, value, kw)))
                    text_subs.append((chid, sub))
                    text_pvs.add(i)
        end = time.monotonic() + args.seconds if args.seconds is not None else math.inf
        while events < (args.max_events or math.inf):
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            batch = mon.get_batch(timeout=min(remaining, 0.05 if text_pvs else 0.5))
            lines = []
            while not as_text.empty() and events < (args.max_events or math.inf):
                i, v, kw = as_text.get()
                shown = fmt.values(v, STRING, None, None, counted=bool(args.count))
                n_el = len(v) if isinstance(v, list) else 1
                lines.append(f"{fmt.name(names[i], n_el)}{fmt.sep}"
                             f"{stamp(i, float(kw.get('timestamp', 0.0)), epics_ns(kw))}"
                             f"{_wide_values(shown, fmt.sep, n_el)}"
                             f"{fmt.alarm(int(kw.get('status', 0)), int(kw.get('severity', 0)))}")
                events += 1
            if batch is None:
                if lines:
                    out.write("\n".join(lines) + "\n")
                    out.flush()
                continue
            for k in range(len(batch)):
                i = int(batch.index[k])
                kind = int(batch.kind[k])
                name = names[i]
                if kind == 1:
                    seen.add(i)
                    continue
                if kind == 2:
                    if i in seen:
                        lines.append(f"{fmt.name(name, 1)}{fmt.sep}{time_text(time.time())} *** disconnected")
                    elif i not in reported:  # never connected: say so now, not only at the end
                        reported.add(i)
                        print(f"{name}: not connected", file=sys.stderr)
                    continue
                if i in text_pvs:
                    continue  # its value events come as the server's text (-s)
                native, enums = info.get(name, (None, None))
                v: Any = batch.values[k] if batch.values is not None else batch.value[k]
                if native is None:
                    native = STRING if isinstance(v, str) else 6
                if isinstance(v, np.generic):
                    v = v.item()
                shown = fmt.values(v, native, None, enums, counted=bool(args.count))
                n_el = len(v) if hasattr(v, "__len__") and not isinstance(v, str) else 1
                ns = int(batch.stamp_ns[k]) if batch.stamp_ns is not None else None
                lines.append(f"{fmt.name(name, n_el)}{fmt.sep}{stamp(i, float(batch.timestamp[k]), ns)}"
                             f"{_wide_values(shown, fmt.sep, n_el)}"
                             f"{fmt.alarm(int(batch.status[k]), int(batch.severity[k]))}")
                events += 1
                if args.max_events is not None and events >= args.max_events:
                    break
            if lines:
                out.write("\n".join(lines) + "\n")
                out.flush()
            if batch.overflow:
                print(f"capar: {batch.overflow} events dropped (queue full)", file=sys.stderr)
        connected = mon.connected
        for chid, sub in text_subs:
            _ch.clear_subscription(sub)
            _ch.clear_channel(chid)
    never = [i for i in range(len(names)) if i not in seen and not connected[i]]
    _report_failures([(names[i], "not connected") for i in never if i not in reported])
    return 1 if never else 0


_FORMATS = ("text", "json", "csv", "npz", "snap", "sav")


def _output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output:
        ext = os.path.splitext(args.output)[1].lower().lstrip(".")
        if ext == "txt":
            return "text"
        if ext not in _FORMATS:
            raise UsageError(f"{args.output}: cannot tell the format from the suffix "
                             "(use .json, .csv, .npz, .snap, .sav, .txt or --format)")
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
    elif fmt == "snap":
        sys.stdout.write(snap.to_snap())
    elif fmt == "sav":
        from .autosave import format_sav

        sys.stdout.write(format_sav(snap.names.tolist(), snap.values.tolist(), snap.ok.tolist()))
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
    want = saved.take(todo)
    names = [str(n) for n in want.names.tolist()]
    if args.dry_run:
        return _dry_run(want, names, args)
    failed: list[tuple[str, str]] = []
    n_ok = 0
    bar = _progress(len(names), "restore")
    try:
        with _Reader(args) as reader:
            for a, b in _steps(len(names), args, bar):
                part = want.take(slice(a, b))
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

class _Version(argparse.Action):
    """``--version``: computed when asked (finding the compiled core costs a library load)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from ._version import __version__
        from .ca.core import describe

        print(f"capar {__version__} ({describe()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="capar", description="EPICS Channel Access at scale.",
                 epilog="exit status: 0 all PVs ok, 1 some PVs failed (listed on stderr), 2 usage error, "
                        "130 interrupted")
    from ._version import __version__

    ap.add_argument("--version", action=_Version, nargs=0, help="show capar's version, which path runs its hot "
                    "loops (the compiled core or pure ctypes), and exit")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    tool_default: list[float] = []  # EPICS_CLI_TIMEOUT, read (and complained about) once

    def timeout(p: argparse.ArgumentParser, default: Optional[float] = 5.0) -> None:
        if default is None:  # EPICS base's tools: 1 s, or EPICS_CLI_TIMEOUT
            from .catools import cli_timeout

            if not tool_default:
                tool_default.append(cli_timeout())
            default = tool_default[0]
            note = "EPICS_CLI_TIMEOUT or 1"
        else:
            note = f"{default:g}"
        p.add_argument("-w", type=float, default=default, metavar="SEC",
                       help=f"timeout in seconds: connection, read, put completion (default {note})")

    def sources(p: argparse.ArgumentParser, short_macros: bool = True, short_file: bool = True) -> None:
        """PV names: arguments, a names file, a request file.  The EPICS tools' commands give up -f (a
        float format there) and camonitor's -m (the event mask): their long forms stay."""
        p.add_argument("pvs", nargs="*", metavar="PV", help="PV names")
        p.add_argument(*(("-f", "--file") if short_file else ("--file",)), metavar="FILE",
                       help="file with PV names (one or more per line, # comments)")
        p.add_argument("-r", "--request", metavar="FILE.req",
                       help="autosave request file (macros $(P), includes 'file other.req P=...')")
        p.add_argument(*(("-m", "--macros") if short_macros else ("--macros",)), action="append",
                       metavar="P=...,Q=...", help="macros for the request file (repeatable)")

    def bulk(p: argparse.ArgumentParser) -> None:
        p.add_argument("--processes", type=_positive_int, metavar="K",
                       help="shard the reads/writes over K worker processes (capar.Coordinator)")
        p.add_argument("--chunk", type=_positive_int, metavar="N",
                       help=f"work N PVs at a time (default {DEFAULT_CHUNK} when a progress bar is shown, "
                            "else all at once); -w applies to each chunk")

    def tolerance(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default 0)")
        p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for numbers (default 0)")

    def epics_format(p: argparse.ArgumentParser, floats: bool = True, ints: bool = True) -> None:
        """The value-format options EPICS base's caget/camonitor share (tool_lib.c)."""
        p.add_argument("-F", default=" ", metavar="SEP", type=_separator,
                       help="alternate output field separator (one character)")
        p.add_argument("-n", action="store_true", help="print ENUM values as numbers")
        p.add_argument("-S", action="store_true", help="print a char array as a string (long string)")
        p.add_argument("-#", dest="count", type=_positive_int, metavar="N",
                       help="request and print the first N elements of arrays (with the count)")
        p.add_argument("-p", type=int, metavar="PRIO", help="CA priority (accepted, not used by capar)")
        if floats:
            for kind in "efg":
                p.add_argument(f"-{kind}", dest="float_digits", type=_digits(kind), metavar="N",
                               help=f"floating point as %%{kind} with N digits")
            p.add_argument("-s", action="store_true", help="floating point as the server formats it (PREC)")
            p.add_argument("-l", dest="long_base", choices="xob", metavar="x|o|b",
                           help="-lx/-lo/-lb: floating point rounded to a long, in hex/octal/binary")
        if ints:
            p.add_argument("-0", dest="int_base", choices="xob", metavar="x|o|b",
                           help="-0x/-0o/-0b: integers in hex/octal/binary")

    p = sub.add_parser("get", help="read PVs (caget)",
                       description="Read PVs and print them as EPICS base's caget does ('NAME VALUE'; arrays as "
                                   "'NAME COUNT V1 V2 ...').  Failures go to stderr (exit status 1).")
    timeout(p, None)
    sources(p, short_file=False)
    p.add_argument("-t", action=_OutputMode, nargs=0, default=False, help="terse: the value only")
    p.add_argument("-a", action=_OutputMode, nargs=0, default=False, help="wide: NAME TIMESTAMP VALUE STAT SEVR")
    p.add_argument("-c", action="store_true", help="read the current number of elements (callback get)")
    p.add_argument("-d", action=_OutputMode, type=_dbr_type, metavar="TYPE",
                   help="request DBR type TYPE (number or name, DBR_ prefix optional) and print its fields")
    epics_format(p)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("put", help="write one PV (caput)",
                       description="Write VALUE (all arguments joined by spaces; -a: an array) and print the old "
                                   "and new values as EPICS base's caput does.")
    p._negative_number_matcher = _NEGATIVE_NUMBER  # argparse's own takes -2.5e0 for an option
    timeout(p, None)
    p.add_argument("-c", "--wait", dest="c", action="store_true", help="wait for processing to complete")
    p.add_argument("-a", action="store_true", help="array: the first value is the element count (caput -a)")
    p.add_argument("-t", action="store_true", help="terse: print only the new value")
    p.add_argument("-l", action="store_true", help="long: NAME TIMESTAMP VALUE STAT SEVR")
    p.add_argument("-s", action="store_true", help="ENUM values as state strings only")
    epics_format(p, floats=False, ints=False)
    p.add_argument("pv", metavar="PV")
    p.add_argument("values", nargs="*", metavar="VALUE")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("info", help="describe PVs (cainfo)",
                       description="Print state, host, access, native type and element count as cainfo does.")
    timeout(p, None)
    sources(p, short_file=False)
    p.add_argument("-s", type=int, metavar="LEVEL", help="print libca's client status report at LEVEL")
    p.add_argument("-p", type=int, metavar="PRIO", help="CA priority (accepted, not used by capar)")
    p.add_argument("-v", "--verbose", action="store_true", help="pyepics' cainfo paragraph (value, metadata)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("monitor", help="print changes (camonitor)",
                       description="Print 'NAME TIMESTAMP VALUE [STAT SEVR]' for every change, as camonitor "
                                   "does, until Ctrl-C, --count or --seconds.")
    timeout(p, None)
    sources(p, short_macros=False, short_file=False)
    p.add_argument("-m", type=_event_mask, metavar="MASK",
                   help="event mask: any of v (value), a (alarm), l (log), p (property); default va")
    p.add_argument("-t", metavar="MODE",
                   help="timestamps: s server (default), c client, n none; r relative, i incremental, "
                        "I incremental per channel (combine, e.g. -t sc)")
    p.add_argument("--count", dest="max_events", type=int, metavar="N", help="stop after N value events")
    p.add_argument("--seconds", type=float, metavar="T", help="stop after T seconds")
    epics_format(p)
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
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot file (.json, .csv, .npz, .snap, .sav)")
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


class _OutputMode(argparse.Action):
    """caget's -t, -a and -d: the last one given wins; a second one prints caget's complaint first."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        if ns.t or ns.a or ns.d is not None:
            print("Options t,d,a are mutually exclusive. ('caget -h' for help.)", file=sys.stderr)
        ns.t, ns.a, ns.d = False, False, None
        setattr(ns, self.dest, values if self.nargs != 0 else True)


#: caput's values may be negative numbers in any C form (-2.5e0, -.5, -inf): arguments, not options
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def _separator(text: str) -> str:
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"the separator must be one character, not {text!r}")
    return text


def _digits(kind: str) -> Callable[[str], Optional[tuple[str, int]]]:
    """-e/-f/-g N as the tools take it: 0..18 digits; anything else is reported and ignored (not an error)."""
    def parse(text: str) -> Optional[tuple[str, int]]:
        m = re.match(r"\s*[-+]?\d+", text)  # sscanf("%d")
        if m is None:
            print(f"Invalid precision argument '{text}' for option '-{kind}' - ignored.", file=sys.stderr)
            return None
        n = int(m.group(0))
        if not 0 <= n <= 18:
            print(f"Precision {n} for option '-{kind}' out of range - ignored.", file=sys.stderr)
            return None
        return kind, n
    return parse


def _dbr_type(text: str) -> int:
    from .catools import parse_dbr_type

    value = parse_dbr_type(text)
    if value is None or value > 34:
        raise argparse.ArgumentTypeError(f"invalid or unsupported DBR type {text!r} (0..34, e.g. TIME_DOUBLE)")
    return value


def _event_mask(text: str) -> int:
    from .catools import parse_mask

    value = parse_mask(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"invalid event mask {text!r}: use letters v, a, l, p")
    return value


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``capar`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        if args.cmd in ("get", "put", "info", "monitor"):
            from .catools import cli_timeout

            cli_timeout(warn=True)  # the tools' complaint about a bad EPICS_CLI_TIMEOUT, -w given or not
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
