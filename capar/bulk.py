"""Bulk fast path: thousands of PVs created, connected and read with one deadline into a Snapshot.

``Group`` keeps its channels for repeated reads/writes; ``acquire`` is the one-shot form; ``caget_many`` /
``caput_many`` are pyepics' list functions built on the same path.  Per-PV failures never raise: they
are reported in the Snapshot's ``ok``/``error`` columns (or as None / -1 in the pyepics functions).
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from .ca import dbr
from .ca.bulk import BulkChannels
from .ca.dbr import c_string
from .ca.channel import BadValue, check_names, encode_value
from .ca.context import CAContext, current
from .ca.errors import ECA, eca_message, seconds
from .snapshot import Snapshot

__all__ = ["Group", "acquire", "caget_many", "caput_many", "PutResult"]

log = logging.getLogger("capar")

FORMS = ("native", "time", "ctrl")
_STRING_TIME = dbr.TIME_STRING


@dataclass
class PutResult:
    """Per-PV outcome of a bulk put, in input order."""

    names: np.ndarray
    ok: np.ndarray
    error: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    @property
    def failed(self) -> list[tuple[str, Optional[str]]]:
        return [(str(self.names[i]), self.error[i]) for i in np.flatnonzero(~self.ok)]

    def status_list(self) -> list[int]:
        """pyepics convention: 1 for success, -1 for failure."""
        return [1 if ok else -1 for ok in self.ok.tolist()]


class Group:
    """Many channels connected together, read and written in one round trip each.

    Parameters
    ----------
    names : sequence of str — duplicates allowed (each position is answered).
    form : 'native', 'time' or 'ctrl' — which metadata the Snapshot carries.
    count : int or None — maximum elements per array PV (None: the server's current length).
    as_string : bool — enums as their strings, CHAR arrays as text, numbers as str.
    connection_timeout : float, seconds — ONE deadline for connecting all channels.
    """

    def __init__(self, names: Iterable[str], form: str = "native", count: Optional[int] = None,
                 as_string: bool = False, connection_timeout: float = 5.0) -> None:
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, not {form!r}")
        if count is not None and (not isinstance(count, (int, np.integer)) or count < 0):
            raise ValueError(f"count must be a non-negative int or None, not {count!r}")
        self.names, self._name_errors = check_names(names)
        self.form = form
        self.count = None if not count else int(count)
        self.as_string = as_string
        self.connection_timeout = seconds(connection_timeout, "connection_timeout")
        good = [str(n) if not isinstance(n, bytes) else n.decode() for n, e in zip(self.names, self._name_errors)
                if e is None]
        self.unique: list[str] = list(dict.fromkeys(good))
        pos = {n: i for i, n in enumerate(self.unique)}
        self._map = np.asarray(
            [pos[(n.decode() if isinstance(n, bytes) else n)] if e is None else -1
             for n, e in zip(self.names, self._name_errors)], dtype=np.int64)
        self._display_names = [n_ if isinstance(n_, str) else repr(n_) for n_ in self.names]
        # every input name is its own unique PV, in order: the read's columns are the Snapshot's as they are
        self._identity = len(self.unique) == len(self.names) and bool(
            (self._map == np.arange(len(self.names))).all())
        self._plan: Optional[tuple] = None  # see _read_plan
        t0 = time.monotonic()
        ctx = current()
        ctx.close_orphans()
        self._chans = BulkChannels([n.encode("utf-8") for n in self.unique], ctx)
        try:
            # dropped without close(): the channels are queued for the context's next owner or clear_cache
            # (no libca call in a finalizer, which may run on any thread, even inside a libca callback)
            weakref.finalize(self, _orphan_unless_closed, ctx, self._chans)
            ctx.adopt(self)  # closed by clear_cache and at exit
            self.connected = self._chans.wait_connected(t0 + self.connection_timeout)
            self._refresh_info()
        except BaseException:  # Ctrl-C while connecting: nobody will ever close these channels
            self._chans.close()
            raise
        self.connect_seconds = time.monotonic() - t0

    # -- state -----------------------------------------------------------------------------------
    def _refresh_info(self) -> None:
        self.ftype, self.nelm = self._chans.info(self.connected)
        self.connected &= self.ftype >= 0
        self._enum_strs: dict[int, tuple] = {}
        self._plan = None

    def _read_plan(self) -> tuple:
        """What a read does while the connection state stays the same, worked out once: (scalar groups
        [(native type, unique indices, DBR type requested)], array indices, every PV connected)."""
        if self._plan is None:
            ctrl = self.form == "ctrl"
            conn_idx = np.flatnonzero(self.connected)
            is_scalar = (self.nelm[conn_idx] == 1) | (self.count == 1)
            scalar = conn_idx[is_scalar]
            groups = []
            # sorted(set()) rather than np.unique, whose first call imports numpy.ma (~15 ms of `capar get`)
            for native in sorted(set(self.ftype[scalar].tolist())):
                want_str = self.as_string and native == dbr.ENUM and not ctrl
                dtype = _STRING_TIME if want_str else dbr.promote_type(native, use_time=not ctrl, use_ctrl=ctrl)
                groups.append((native, scalar[self.ftype[scalar] == native], dtype))
            self._plan = (groups, conn_idx[~is_scalar], bool(self.connected.all()))
        return self._plan

    def _recheck(self, idx: Optional[np.ndarray] = None) -> None:
        """Refresh connection state of channels *idx* (default: those not connected last time)."""
        if idx is None:
            idx = np.flatnonzero(~self.connected)
        if idx.size == 0:
            return
        now = self._chans.states(idx) == dbr.CS_CONN
        if np.array_equal(now, self.connected[idx]):
            return
        self.connected[idx] = now
        self._refresh_info()

    def __len__(self) -> int:
        return len(self.names)

    def __enter__(self) -> "Group":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Group {len(self)} PVs, {int(self.connected.sum())}/{len(self.unique)} connected>"

    def reconnect(self, timeout: float = 1.0) -> int:
        """Wait up to *timeout* seconds for channels that are not connected; returns how many are."""
        self.connected = self._chans.wait_connected(time.monotonic() + seconds(timeout))
        self._refresh_info()
        return int(self.connected.sum())

    def hosts(self) -> list[Optional[str]]:
        """Server (``"host:port"`` of the IOC) of every PV in input order; None where not connected."""
        self._recheck(np.arange(len(self.unique)))
        conn = np.flatnonzero(self.connected)
        per_unique: list[Optional[str]] = [None] * len(self.unique)
        for u, host in zip(conn.tolist(), self._chans.hosts(conn)):
            per_unique[u] = host or None
        return [per_unique[u] if u >= 0 else None for u in self._map.tolist()]

    def native_types(self) -> list[int]:
        """Native DBR type (0..6) of every PV in input order; -1 where it never connected."""
        self._recheck(np.arange(len(self.unique)))
        return [int(self.ftype[u]) if u >= 0 and self.connected[u] else -1 for u in self._map.tolist()]

    def element_counts(self) -> list[int]:
        """Native element count (NELM) of every PV in input order; 0 where it never connected."""
        self._recheck(np.arange(len(self.unique)))
        return [int(self.nelm[u]) if u >= 0 and self.connected[u] else 0 for u in self._map.tolist()]

    def close(self) -> None:
        """Clear every channel (idempotent)."""
        self._chans.close()

    @property
    def closed(self) -> bool:
        return self._chans.closed

    # -- reads -------------------------------------------------------------------------------------
    def get(self, timeout: float = 2.0) -> Snapshot:
        """Read every PV with ONE deadline *timeout* (seconds); failures are per PV in the Snapshot."""
        t0 = time.monotonic()
        deadline = t0 + seconds(timeout)
        u = len(self.unique)
        if self._plan is None or not self._plan[2]:
            self._recheck()
        groups, arrays, all_connected = self._read_plan()
        # every PV a connected scalar read with a time stamp: each element of the columns is written below
        # (failed reads too); the ctrl form has no time stamps to write
        cover = all_connected and not arrays.size and self.form != "ctrl"
        if cover:
            value, stamp = np.empty(u), np.empty(u)
            status, severity = np.empty(u, dtype=np.int16), np.empty(u, dtype=np.int16)
            stamp_ns = np.empty(u, dtype=np.int64)
            ok = np.ones(u, dtype=bool)
        else:
            value, stamp = np.full(u, np.nan), np.full(u, np.nan)
            status, severity = np.full(u, -1, dtype=np.int16), np.full(u, -1, dtype=np.int16)
            stamp_ns = np.zeros(u, dtype=np.int64)  # the IOC's (secs, nsec) exactly: EPICS-epoch nanoseconds
            ok = np.zeros(u, dtype=bool)
        values = np.empty(u, dtype=object)  # None everywhere
        error = np.empty(u, dtype=object)
        ctrl_cols: dict[str, np.ndarray] = {}
        if self.form == "ctrl":
            ctrl_cols = _empty_ctrl(u)
        if not all_connected:
            error[~self.connected] = "not connected"
        ctrl = self.form == "ctrl"
        # scalars: one request set per native type
        for native, idx, dtype in groups:
            buf, done, req = self._chans.sg_get(idx, dtype, deadline)
            all_done = bool(done.all())
            recs = buf if all_done else buf[done]  # buf is reused by the next read: assignments below copy
            good = idx if all_done else idx[done]
            vals = recs["value"]
            status[good] = recs["status"]
            severity[good] = recs["severity"]
            if not ctrl:
                secs, nsec = recs["secs"], recs["nsec"]
                stamp[good] = dbr.to_posix(secs, nsec)
                stamp_ns[good] = secs.astype(np.int64) * 1_000_000_000 + nsec
            else:
                _fill_ctrl(ctrl_cols, good, recs)
            if not cover:
                ok[good] = True
            bad = idx[~done] if not all_done else idx[:0]
            if bad.size:
                if cover:  # the values a failed read has
                    value[bad], status[bad], severity[bad], stamp[bad], stamp_ns[bad] = np.nan, -1, -1, np.nan, 0
                    ok[bad] = False
                lost = self._chans.states(bad) != dbr.CS_CONN
                error[bad] = ["disconnected" if gone else ("timeout" if r == ECA.NORMAL else eca_message(int(r)))
                              for gone, r in zip(lost.tolist(), req[~done].tolist())]
                if lost.any():
                    self.connected[bad[lost]] = False
                    self._plan = None
            if dbr.native_type(dtype) == dbr.STRING:
                strs = [c_string(b) for b in vals.tolist()]
                values[good] = _obj(strs)
                if cover:  # text has no float value (the column was not pre-filled)
                    value[good] = np.nan
            else:
                value[good] = vals
                if self.as_string:
                    enum = ctrl and native == dbr.ENUM
                    values[good] = _obj([self._scalar_text(native, v, k, recs, enum)
                                         for k, v in enumerate(vals.tolist())])
                else:
                    values[good] = _obj(vals.tolist())
        # arrays: callback gets with count 0 (the server's current length)
        if arrays.size:
            types = np.asarray([dbr.promote_type(int(t), use_time=not ctrl, use_ctrl=ctrl)
                                for t in self.ftype[arrays].tolist()], dtype=np.int64)
            counts = np.full(arrays.size, self.count or 0, dtype=np.int64)
            if self.count:
                counts = np.minimum(counts, self.nelm[arrays])
            results = self._chans.callback_get(arrays, types, counts, deadline)
            for i, res in zip(arrays.tolist(), results):
                if res is None:
                    error[i] = "timeout"
                    continue
                if res[0] == "error":
                    error[i] = eca_message(res[1])
                    continue
                _, rtype, rcount, raw = res
                vals, header = dbr.decode(rtype, rcount, raw)
                status[i], severity[i] = int(header["status"]), int(header["severity"])
                if not ctrl:
                    stamp[i] = float(dbr.to_posix(int(header["secs"]), int(header["nsec"])))
                    stamp_ns[i] = int(header["secs"]) * 1_000_000_000 + int(header["nsec"])
                else:
                    _fill_ctrl(ctrl_cols, np.asarray([i]), np.asarray([header]))
                values[i] = self._array_value(rtype, vals)
                ok[i] = True
        if self._identity:
            snap = Snapshot(self._display_names, value, values, status, severity, stamp, ok, error,
                            ctrl=ctrl_cols, form=self.form)
            if not ctrl:
                snap.stamp_ns = stamp_ns
            snap.elapsed = time.monotonic() - t0
            return snap
        # back to input order
        m = self._map
        valid = m >= 0
        n = len(self.names)
        snap = Snapshot.empty(self._display_names, form=self.form)
        sel = m[valid]
        snap.value[valid] = value[sel]
        snap.values[valid] = values[sel]
        snap.status[valid] = status[sel]
        snap.severity[valid] = severity[sel]
        snap.timestamp[valid] = stamp[sel]
        if not ctrl:  # not a column (files keep the float): for text that must round like the C tools
            snap.stamp_ns = np.zeros(n, dtype=np.int64)
            snap.stamp_ns[valid] = stamp_ns[sel]
        snap.ok[valid] = ok[sel]
        snap.error[valid] = error[sel]
        if n and not valid.all():
            snap.error[~valid] = np.asarray(self._name_errors, dtype=object)[~valid]
        if ctrl_cols:
            snap.ctrl = {k: _take(v, m) for k, v in ctrl_cols.items()}
        snap.elapsed = time.monotonic() - t0
        return snap

    def _scalar_text(self, native: int, v: Any, k: int, buf: np.ndarray, enum: bool) -> str:
        if enum:
            strs = buf[k]["strs"][: int(buf[k]["no_str"])]
            try:
                return c_string(bytes(strs[int(v)]))
            except IndexError:
                return str(v)
        if native == dbr.CHAR:
            return chr(v) if v else ""
        return str(v)

    def _array_value(self, rtype: int, vals: np.ndarray) -> Any:
        native = dbr.native_type(rtype)
        if native == dbr.STRING:
            return [c_string(b) for b in vals.tolist()]
        if native == dbr.CHAR and self.as_string:
            return c_string(bytes(vals)).strip()
        return vals  # a view into this read's private buffer: no second copy

    # -- writes -------------------------------------------------------------------------------------
    def put(self, values: Sequence[Any], wait: bool = False, timeout: float = 60.0,
            empty: str = "error") -> PutResult:
        """Write one value per PV (input order).  *timeout* seconds: one deadline for all completions.

        Values of the wrong type/shape, unconnected or read-only PVs fail alone (``PutResult.error``).
        *empty* says what an empty array does (Channel Access cannot write zero elements): ``"error"``
        fails that PV alone (what a restore of a saved empty waveform needs), ``"zeros"`` writes NELM
        zeros or empty strings (pyepics' ``caput``/``caput_many``).
        """
        if empty not in ("error", "zeros"):
            raise ValueError(f"empty must be 'error' or 'zeros', not {empty!r}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError("values must be a sequence with one value per PV")
        if len(values) != len(self.names):
            raise ValueError(f"{len(values)} values for {len(self.names)} PVs")
        deadline = time.monotonic() + seconds(timeout)
        n = len(self.names)
        ok = np.zeros(n, dtype=bool)
        error = np.full(n, None, dtype=object)
        self._recheck()
        items, targets, positions = [], [], []
        for p in range(n):
            u = int(self._map[p])
            if u < 0:
                error[p] = self._name_errors[p]
                continue
            if not self.connected[u]:
                error[p] = "not connected"
                continue
            try:
                items.append(encode_value(self.unique[u], int(self.ftype[u]), int(self.nelm[u]), values[p],
                                          empty_fills=empty == "zeros"))
            except BadValue as exc:
                error[p] = f"bad value: {exc}"
                continue
            targets.append(u)
            positions.append(p)
        if targets:
            tidx = np.asarray(targets, dtype=np.int64)
            writable = self._chans.write_access(tidx)
            keep = [k for k in range(len(targets)) if writable[k]]
            for k in range(len(targets)):
                if not writable[k]:
                    error[positions[k]] = "no write access"
            results = self._chans.put(tidx[keep], [items[k] for k in keep], bool(wait), deadline)
            for k, res in zip(keep, results):
                p = positions[k]
                if res is None:
                    error[p] = "timeout"
                elif res[0] == "error":
                    error[p] = eca_message(res[1])
                else:
                    ok[p] = True
        return PutResult(np.asarray([str(x) for x in self.names], dtype=object), ok, error)


def _obj(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


_CTRL_FLOAT_COLS = ("upper_disp_limit", "lower_disp_limit", "upper_alarm_limit", "upper_warning_limit",
                    "lower_warning_limit", "lower_alarm_limit", "upper_ctrl_limit", "lower_ctrl_limit")


def _empty_ctrl(n: int) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {k: np.full(n, np.nan) for k in _CTRL_FLOAT_COLS}
    cols["precision"] = np.full(n, -1, dtype=np.int16)
    cols["units"] = np.full(n, None, dtype=object)
    cols["enum_strs"] = np.full(n, None, dtype=object)
    return cols


def _fill_ctrl(cols: dict[str, np.ndarray], idx: np.ndarray, recs: np.ndarray) -> None:
    names = recs.dtype.names or ()
    for k in _CTRL_FLOAT_COLS:
        if k in names:
            cols[k][idx] = recs[k]
    if "precision" in names:
        cols["precision"][idx] = recs["precision"]
    if "units" in names:
        cols["units"][idx] = _obj([c_string(bytes(u))
                                   for u in recs["units"].tolist()])
    if "no_str" in names:
        cols["enum_strs"][idx] = _obj([
            tuple(c_string(bytes(s)) for s in r["strs"][: int(r["no_str"])])
            for r in recs])


def _take(col: np.ndarray, m: np.ndarray) -> np.ndarray:
    out = np.empty(len(m), dtype=col.dtype) if col.dtype != object else np.full(len(m), None, dtype=object)
    if col.dtype.kind == "f":
        out[:] = np.nan
    elif col.dtype.kind in "iu":
        out[:] = -1
    valid = m >= 0
    out[valid] = col[m[valid]]
    return out


def _orphan_unless_closed(ctx: CAContext, chans: BulkChannels) -> None:
    """Finalizer of a Group: channels it left open go to the context's orphans (no libca call here)."""
    if not chans.closed:
        ctx.orphan(chans)


def acquire(names: Iterable[str], form: str = "time", timeout: float = 2.0, connection_timeout: float = 5.0,
            count: Optional[int] = None, as_string: bool = False) -> Snapshot:
    """One-shot bulk read: connect (one *connection_timeout* deadline, seconds), read (one *timeout*), close."""
    timeout = seconds(timeout)
    with Group(names, form=form, count=count, as_string=as_string,
               connection_timeout=connection_timeout) as g:
        snap = g.get(timeout=timeout)
        snap.elapsed += g.connect_seconds
        return snap


def caget_many(pvlist: Iterable[str], as_string: bool = False, as_numpy: bool = True,
               count: Optional[int] = None, timeout: float = 1.0, connection_timeout: float = 5.0,
               conn_timeout: Optional[float] = None) -> list:
    """pyepics ``caget_many``: a list of values with None for PVs that did not connect or answer.

    timeout : float, seconds for the read; connection_timeout : float, seconds for ALL connections.
    """
    if conn_timeout is not None:
        connection_timeout = conn_timeout
    pvlist = list(pvlist)
    snap = _read_cached(pvlist, timeout, connection_timeout, count, as_string)
    out = []
    for v, ok, err, name in zip(snap.values.tolist(), snap.ok.tolist(), snap.error.tolist(), snap.names):
        if not ok:
            log.info("capar: caget_many: %s: %s", name, err)
            out.append(None)
        elif not as_numpy and isinstance(v, np.ndarray):
            out.append(v.tolist())
        else:
            out.append(v)
    return out


_MANY_GROUPS = 8  # Groups kept per context for caget_many (the most recently used name lists)


def _read_cached(pvlist: list, timeout: float, connection_timeout: float, count: Optional[int],
                 as_string: bool) -> Snapshot:
    """One native-form read of *pvlist* through a Group kept by the calling thread's context for the next
    caget_many of the same names, as pyepics keeps its channels: a scan that reads the same detectors at
    every point connects them once.  Channels not connected (yet) are waited for up to
    *connection_timeout* seconds on every call, as a fresh read would; ``ca.clear_cache()`` closes them."""
    try:
        key = (tuple(pvlist), count, as_string)
        hash(key)
    except TypeError:  # unhashable entries (bad names): a one-shot read reports them per PV
        return acquire(pvlist, form="native", timeout=timeout, connection_timeout=connection_timeout,
                       count=count, as_string=as_string)
    ctx = current()
    cache = ctx.kept("caget_many_groups", lambda _ctx: OrderedDict())
    with ctx.lock:
        item = cache.get(key)
        if item is not None and not item[0].closed:
            cache.move_to_end(key)
    if item is None or item[0].closed:
        group = Group(pvlist, form="native", count=count, as_string=as_string,
                      connection_timeout=connection_timeout)
        item = (group, threading.Lock())
        with ctx.lock:
            cache[key] = item
            evicted = [cache.popitem(last=False)[1] for _ in range(max(len(cache) - _MANY_GROUPS, 0))]
        for old, lock in evicted:
            with lock:
                old.close()
    group, lock = item
    with lock:  # a Group reads one request at a time (its buffers are reused)
        if group.closed:  # closed by clear_cache meanwhile
            return acquire(pvlist, form="native", timeout=timeout, connection_timeout=connection_timeout,
                           count=count, as_string=as_string)
        if not group.connected.all():
            group.reconnect(connection_timeout)
        return group.get(timeout)


def caput_many(pvlist: Iterable[str], values: Sequence[Any], wait: Union[bool, str] = False,
               connection_timeout: float = 5.0, put_timeout: float = 60) -> list[int]:
    """pyepics ``caput_many``: 1 for each successful put, -1 for each failure.

    wait : False (no wait), 'each' (wait for each put in turn) or 'all'/True (issue all, then wait).
    connection_timeout, put_timeout : float, seconds.
    """
    pvlist = list(pvlist)
    if len(values) != len(pvlist):
        raise ValueError(f"{len(values)} values for {len(pvlist)} PVs")
    with Group(pvlist, connection_timeout=connection_timeout) as g:
        if wait == "each":
            return [_put_one(g, i, values[i], put_timeout) for i in range(len(pvlist))]
        res = g.put(list(values), wait=bool(wait), timeout=put_timeout, empty="zeros")
        for name, err in res.failed:
            log.warning("capar: caput_many: %s: %s", name, err)
        return res.status_list()


def _put_one(g: Group, i: int, value: Any, timeout: float) -> int:
    sub = Group.__new__(Group)
    sub.__dict__.update(g.__dict__)
    sub.names = [g.names[i]]
    sub._name_errors = [g._name_errors[i]]
    sub._map = g._map[i:i + 1]
    res = sub.put([value], wait=True, timeout=timeout, empty="zeros")
    if not res.ok[0]:
        log.warning("capar: caput_many: %s: %s", res.names[0], res.error[0])
    return 1 if res.ok[0] else -1
