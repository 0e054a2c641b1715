"""Low-level bulk operations on many channels at once (the C-speed path under :mod:`capar.bulk`).

No Python callback per PV on the scalar path: channels are created without connection callbacks, waited for
with ``ca_pend_io`` slices under ONE deadline, and read into preallocated numpy struct arrays with
``ca_sg_array_get`` into one synchronous group (independent of other threads' ``ca_pend_io``).  Sentinels
left in the buffers (an impossible ``nsec`` for TIME structs, severity -1 for CTRL structs) tell which
requests completed, both while waiting (see :func:`_sg_wait`) and for the requests that never do.
Arrays, whose length is only known by the server, use ``ca_array_get_callback`` with count 0; their
callback copies the bytes and counts down a latch.

With capar's compiled core (:mod:`capar.ca.core`, ``ctx.core``), the per-channel loops (create, state,
type and count queries, clear) run in C, one call each, and scalar reads are ``ca_array_get_callback``
requests whose C callback copies each reply into the same struct array and counts completions under a
mutex: the waiter wakes when the last one arrives instead of polling sentinels.  Results are the same.

Threads: everything runs in the caller's thread except :func:`_on_bulk` (and the core's C callback), which
libca calls on its own thread; it only fills a slot of the request's result list.
"""
from __future__ import annotations

import ctypes
import threading
import time
from itertools import repeat
from typing import Any, Callable, Sequence

import numpy as np

from . import dbr, errors
from .context import CAContext, current
from .core import pack_names
from .binding import EventCallback

__all__ = ["BulkChannels", "TIME_SENTINEL_NSEC"]

TIME_SENTINEL_NSEC = 0xFFFFFFFF
_FIRST_SLICE = 0.25  # seconds: the first ca_pend_io while waiting for connections
_SLICE = 0.05  # seconds: longest ca_pend_event slice between two state checks after that
_SG_PAUSE = (5e-5, 1e-3)  # seconds: first and longest pause between two looks at the sentinels


def _sg_wait(lib: Any, field: np.ndarray, sentinel: int, deadline: float) -> None:
    """Wait until no element of *field* (a column of a sync group's reply buffer) is *sentinel* any
    more, or *deadline* (time.monotonic seconds).  The caller's ``ca_sg_delete`` afterwards is the
    barrier that makes the last copy complete (libca copies replies under the lock it takes).

    Neither ``ca_sg_block``, which cannot be sliced (libca resets the group, cancelling what is
    outstanding, every time it returns) and would hold off Ctrl-C for the whole timeout (Python runs
    signal handlers only between two C calls), nor ``ca_sg_test``, which takes libca's callback lock while
    holding its main lock — the reverse order of libca's receive thread — and so deadlocks, or aborts on
    the priority-inheritance mutexes EPICS uses ("__pthread_mutex_lock_full: Assertion ... EDEADLK").
    Pauses of 50 µs growing to 1 ms cost at most ~1 ms of latency and a few µs of CPU each;
    ``ca_pend_event`` as the pause also processes replies in a non-preemptive context.
    """
    lib.ca_flush_io()
    pause, longest = _SG_PAUSE
    while (field == sentinel).any():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        lib.ca_pend_event(min(remaining, pause))
        pause = min(pause * 2, longest)


class _Latch:
    __slots__ = ("results", "remaining", "event", "lock", "active")

    def __init__(self, n: int) -> None:
        self.results: list[Any] = [None] * n
        self.remaining = n
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.active = True
        if n == 0:
            self.event.set()

    def fill(self, slot: int, result: Any) -> None:
        """Store one request's result (dropped once the waiter gave up)."""
        with self.lock:
            if not self.active:
                return
            self.results[slot] = result
            self.remaining -= 1
            if self.remaining <= 0:
                self.event.set()


def _bulk_callback(ctx: CAContext) -> Any:
    """The context's completion callback of bulk requests: fills one slot of the request's latch."""
    table = ctx.bulk_requests

    def on_bulk(args: Any) -> None:
        if ctx.closed:
            return
        item = table.pop(int(args.usr or 0), None)
        if item is None:
            return
        latch, slot = item
        if args.status != errors.ECA.NORMAL:
            result: Any = ("error", int(args.status))
        elif args.dbr:
            result = ("ok", *dbr.copy_event(args))
        else:  # put completion
            result = ("ok", int(args.type), int(args.count), None)
        latch.fill(slot, result)

    return EventCallback(on_bulk)


class BulkChannels:
    """A set of channels created without callbacks in one context (see module docstring).

    ctx : the :class:`~capar.ca.context.CAContext` to create them in (default: the calling thread's).
    Names must not contain NUL bytes (:func:`capar.ca.channel.check_names` refuses them).
    """

    def __init__(self, names: Sequence[bytes], ctx: "CAContext | None" = None) -> None:
        self.ctx = ctx = ctx if ctx is not None else current()
        self.context = ctx.handle
        self.core = ctx.core  # the compiled core, or None: the pure-ctypes path
        lib = ctx.attach()
        n = len(names)
        self.chids = np.zeros(n, dtype=np.uintp)
        self.create_status = np.zeros(n, dtype=np.int32)
        base = self.chids.ctypes.data
        step = self.chids.itemsize
        self.closed = False
        self._plans: dict[tuple, tuple] = {}
        self._cchid_list: "list | None" = None
        self._abandoned: list[int] = []  # the core's timed-out read requests whose callbacks are still due
        try:
            if self.core is not None:
                packed, offsets = pack_names(names)
                self.core.create(self.core.fns, n, packed, offsets.ctypes.data, None, None, 0, base,
                                 self.create_status.ctypes.data)
            else:
                self.create_status[:] = list(map(lib.raw_ca_create_channel, names, repeat(None, n),
                                                 repeat(None, n), repeat(0, n), range(base, base + n * step, step)))
        except BaseException:  # Ctrl-C half way: clear what libca created (chids are written in place)
            self.close()
            raise
        lib.ca_flush_io()

    def __len__(self) -> int:
        return len(self.chids)

    def _lib(self) -> Any:
        if self.closed:
            raise errors.ContextError("bulk channels already closed")
        return self.ctx.attach()

    # -- connection ------------------------------------------------------------------------------
    def states(self, idx: "np.ndarray | None" = None) -> np.ndarray:
        """libca state of every channel, or of channels *idx* (2 == connected; -1 where creation failed)."""
        lib = self._lib()
        if self.core is not None:
            chids = self.chids if idx is None else np.ascontiguousarray(self.chids[idx])
            out = np.empty(len(chids), dtype=np.int8)
            self.core.states(self.core.fns, len(chids), chids.ctypes.data, out.ctypes.data)
            return out
        cchids = self._cchids()
        if idx is None:
            idx = np.arange(len(cchids))
        out = np.full(len(idx), -1, dtype=np.int8)
        live = np.flatnonzero(self.chids[idx])
        if live.size:
            out[live] = list(map(lib.raw_ca_state, [cchids[i] for i in idx[live].tolist()]))
        return out

    def _cchids(self) -> list:
        """The chids as ctypes objects, converted once (see LibCA._raw)."""
        if self._cchid_list is None:
            self._cchid_list = [ctypes.c_void_p(c) for c in self.chids.tolist()]
        return self._cchid_list

    def wait_connected(self, deadline: float) -> np.ndarray:
        """Wait until every channel is connected or *deadline* (time.monotonic seconds); bool array.

        One ``ca_pend_io`` first (it returns as soon as every callback-less channel of the context is
        connected).  It counts other code's channels too, and a timed-out ``ca_pend_io`` resets libca's
        count, so it is bounded by a first slice; after that our own states are polled between short
        ``ca_pend_event`` slices until they are all connected or the deadline passes.
        """
        lib = self._lib()
        remaining = deadline - time.monotonic()
        if remaining > 0:
            status = lib.ca_pend_io(max(min(remaining, _FIRST_SLICE), 1e-6))
            if status == errors.ECA.NORMAL and (self.create_status == errors.ECA.NORMAL).all():
                # every callback-less channel connected; an early return caused by another thread's
                # ca_pend_io is caught by info(), which reports type -1 for unconnected channels
                return np.ones(len(self.chids), dtype=bool)
        slice_ = 0.01
        while True:
            conn = self.states() == dbr.CS_CONN
            remaining = deadline - time.monotonic()
            if conn.all() or remaining <= 0:
                return conn
            lib.ca_pend_event(min(remaining, slice_))
            slice_ = min(slice_ * 2, _SLICE)

    def hosts(self, idx: np.ndarray) -> list[str]:
        """``host:port`` of the server of channels *idx* (libca's ``ca_host_name``; call on connected ones)."""
        lib = self._lib()
        cchids = self._cchids()
        out = [h.decode("utf-8", "replace") for h in map(lib.ca_host_name, [cchids[i] for i in idx.tolist()])]
        return [h if h != "<disconnected>" else "" for h in out]  # lost since the caller looked: "" 

    def info(self, connected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(native field type, element count) of every channel; -1 / 0 where not connected."""
        lib = self._lib()
        ft = np.full(len(self.chids), -1, dtype=np.int16)
        ne = np.zeros(len(self.chids), dtype=np.int64)
        idx = np.flatnonzero(connected)
        if idx.size and self.core is not None:
            chids = np.ascontiguousarray(self.chids[idx])
            ft_c = np.empty(idx.size, dtype=np.int16)
            ne_c = np.empty(idx.size, dtype=np.int64)
            self.core.info(self.core.fns, idx.size, chids.ctypes.data, ft_c.ctypes.data, ne_c.ctypes.data)
            ft[idx], ne[idx] = ft_c, ne_c
        elif idx.size:
            cchids = self._cchids()
            chids = [cchids[i] for i in idx.tolist()]
            ft[idx] = list(map(lib.raw_ca_field_type, chids))
            ne[idx] = list(map(lib.raw_ca_element_count, chids))
            lost = ft[idx] < 0  # disconnected since the caller looked
            ne[idx[lost]] = 0
        return ft, ne

    def read_access(self, idx: np.ndarray) -> np.ndarray:
        lib = self._lib()
        return np.asarray(list(map(lib.ca_read_access, self.chids[idx].tolist())), dtype=bool)

    def write_access(self, idx: np.ndarray) -> np.ndarray:
        lib = self._lib()
        return np.asarray(list(map(lib.ca_write_access, self.chids[idx].tolist())), dtype=bool)

    # -- reads -------------------------------------------------------------------------------------
    def _sg_plan(self, idx: np.ndarray, dbrtype: int) -> tuple:
        """Buffer and pre-converted call arguments for reading *idx* as *dbrtype* (reused across reads)."""
        key = (dbrtype, len(idx), hash(idx.tobytes()))
        plan = self._plans.get(key)
        if plan is not None and np.array_equal(plan[0], idx):
            return plan
        dt = dbr.dtype_of(dbrtype)
        buf = np.zeros(len(idx), dtype=dt)
        base, size = buf.ctypes.data, dt.itemsize
        cchids = self._cchids()
        plan = (idx.copy(), buf, [cchids[i] for i in idx.tolist()],
                [ctypes.c_void_p(a) for a in range(base, base + len(idx) * size, size)])
        if len(self._plans) > 16:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def sg_get(self, idx: np.ndarray, dbrtype: int, deadline: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read one element of *dbrtype* from channels *idx* through one synchronous group.

        Returns (struct array, done mask, request status per channel) -- all three reused by the next
        read of the same channels: copy what you keep.
        """
        lib = self._lib()
        n = len(idx)
        if n == 0:
            return np.zeros(0, dtype=dbr.dtype_of(dbrtype)), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int32)
        if self.core is not None:
            return self._core_get(idx, dbrtype, deadline)
        _, buf, chids, addrs = self._sg_plan(idx, dbrtype)
        # the sentinel: an impossible nsec in TIME structs, severity -1 in CTRL structs
        field, sentinel = (buf["nsec"], TIME_SENTINEL_NSEC) if "nsec" in buf.dtype.names else (buf["severity"], -1)
        field[:] = sentinel
        gid = ctypes.c_uint()
        lib.ca_sg_create(ctypes.byref(gid))
        g = gid.value
        try:
            req = np.fromiter(map(lib.raw_ca_sg_array_get, repeat(gid, n), repeat(ctypes.c_long(dbrtype), n),
                                  repeat(ctypes.c_ulong(1), n), chids, addrs), dtype=np.int32, count=n)
            issued = req == errors.ECA.NORMAL
            field[~issued] = 0  # never answered: not waited for, failed by *issued* below
            _sg_wait(lib, field, sentinel, deadline)
        finally:
            # ca_sg_delete cancels what is still outstanding: nothing writes into buf afterwards
            lib.ca_sg_delete(g)
        done = (field != sentinel) & issued
        return buf, done, req

    def _core_get(self, idx: np.ndarray, dbrtype: int, deadline: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`sg_get` by the compiled core: one ``ca_array_get_callback`` per channel, issued, flushed
        and counted in C; waited for in slices of at most 0.1 s (Ctrl-C is seen between two)."""
        core = self.core
        if self._abandoned:
            self._reap()
        # the same index array object as last time (a Group's read plan): no need to compare contents
        plan = self._plans.get((dbrtype, id(idx)))
        if plan is None or plan[0] is not idx:
            key = ("core", dbrtype, len(idx), hash(idx.tobytes()))
            plan = self._plans.get(key)
            if plan is None or not np.array_equal(plan[1], idx):
                n = len(idx)
                buf, chids = np.zeros(n, dtype=dbr.dtype_of(dbrtype)), np.ascontiguousarray(self.chids[idx])
                done, status = np.zeros(n, dtype=np.uint8), np.zeros(n, dtype=np.int32)
                args = (core.fns, dbrtype, n, chids.ctypes.data, buf.ctypes.data, buf.dtype.itemsize,
                        dbr.dbr_size_n(dbrtype, 1), done.ctypes.data, status.ctypes.data)
                plan = (idx, idx.copy(), buf, chids, done.view(bool), status, args)
                if len(self._plans) > 16:
                    self._plans.clear()
                self._plans[key] = plan
            self._plans[(dbrtype, id(idx))] = plan
        _, _, buf, _chids, done, status, args = plan  # _chids: kept alive by the plan while C reads it
        req = core.check_alloc(core.get_start(*args), "a read request")
        try:
            left = 1
            while left:
                remaining = deadline - time.monotonic()
                left = core.get_wait(core.fns, req, min(max(remaining, 0.0), 0.1), self.ctx.preemptive)
                if remaining <= 0.1:
                    break
        finally:
            if not core.get_finish(req):  # replies still due: freed once they ran (see _reap)
                self._abandoned.append(req)
        return buf, done, status

    def _reap(self) -> None:
        """Free the core's abandoned read requests whose late callbacks have all run."""
        if self._abandoned:
            reap = self.core.req_reap
            self._abandoned = [r for r in self._abandoned if not reap(r)]

    def _with_callbacks(self, idx: np.ndarray, issue: Callable[[int, int, Any, int], int],
                        deadline: float) -> list[Any]:
        """Issue one callback request per channel (``issue(k, chid, callback, key) -> ECA status``), flush
        once and wait for all completions until *deadline*.  Late completions are dropped."""
        lib = self._lib()
        ctx = self.ctx
        cb = ctx.c_callback("bulk", _bulk_callback)
        table = ctx.bulk_requests
        latch = _Latch(len(idx))
        keys = []
        chids = self.chids.tolist()
        try:
            for k, i in enumerate(idx.tolist()):
                key = ctx.new_key()
                table[key] = (latch, k)
                keys.append(key)
                st = issue(k, chids[i], cb, key)
                if st != errors.ECA.NORMAL:
                    table.pop(key, None)
                    latch.fill(k, ("error", int(st)))
            lib.ca_flush_io()
            latch.event.wait(max(deadline - time.monotonic(), 0.0))
        finally:
            with latch.lock:
                latch.active = False
            for key in keys:
                table.pop(key, None)
        return latch.results

    def callback_get(self, idx: np.ndarray, dbrtypes: np.ndarray, counts: np.ndarray,
                     deadline: float) -> list[Any]:
        """Read channels *idx* with ``ca_array_get_callback`` (count 0 = the server's current length).

        Returns one entry per channel: ("ok", type, count, raw bytes) | ("error", status) | None (timeout).
        """
        get = self._lib().ca_array_get_callback
        return self._with_callbacks(
            idx, lambda k, chid, cb, key: get(int(dbrtypes[k]), int(counts[k]), chid, cb, key), deadline)

    # -- writes --------------------------------------------------------------------------------------
    def put(self, idx: np.ndarray, items: list[tuple[int, int, np.ndarray]], wait: bool,
            deadline: float) -> list[Any]:
        """Write encoded values (dbr type, count, buffer) to channels *idx*.

        Without *wait*: ``ca_array_put`` each, one flush; entries are ("ok",...) or ("error", status).
        With *wait*: ``ca_array_put_callback`` each, wait for all completions until *deadline*;
        an entry is None when that put did not complete in time.
        """
        lib = self._lib()
        if not wait:
            chids = self.chids.tolist()
            out: list[Any] = []
            for k, i in enumerate(idx.tolist()):
                t, n, buf = items[k]
                st = lib.ca_array_put(t, n, chids[i], buf.ctypes.data)
                out.append(("ok", t, n, None) if st == errors.ECA.NORMAL else ("error", int(st)))
            lib.ca_flush_io()
            return out
        put = lib.ca_array_put_callback
        return self._with_callbacks(
            idx, lambda k, chid, cb, key: put(items[k][0], items[k][1], chid, items[k][2].ctypes.data, cb, key),
            deadline)

    def close(self) -> None:
        """Clear every channel (idempotent; a no-op after fork or finalize)."""
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        if not ctx.alive:
            return
        lib = ctx.attach()
        with ctx.teardown():
            if self.core is not None:
                self.core.clear(self.core.fns, len(self.chids), self.chids.ctypes.data)
            else:
                cchids = self._cchids()
                list(map(lib.raw_ca_clear_channel, [cchids[i] for i in np.flatnonzero(self.chids).tolist()]))
        lib.ca_flush_io()
        if self._abandoned:  # what is still due was cancelled by the clears: never freed (a few bytes each)
            self._reap()
