"""Low-level many-PV monitoring: one subscription per PV, events written into a preallocated numpy ring.

This is the C-facing half of :class:`capar.Monitor` (the only part that touches libca).

Layout of the ring (capacity ``cap`` events, reused forever, so memory is bounded):

- ``codes`` int64[cap]: ``i`` (>= 0) for a value event of PV ``i``; ``-1 - 2*i`` for "PV i connected" and
  ``-2 - 2*i`` for "PV i disconnected".
- ``raw`` uint8[cap, 24]: the TIME struct of a scalar event exactly as libca delivered it (status, severity,
  secs, nsec, value at the type's offset; 24 bytes hold the largest one, ``DBR_TIME_DOUBLE``).  For string
  and array events only the 12-byte header is stored there and the value goes to ``objs``.  For the
  ``native`` form the bare value is stored at the TIME struct's value offset (header left unset).
- ``objs`` list[cap]: the copied Python value of string/array events (None otherwise).
- ``head`` / ``tail``: events written / consumed so far (monotonic counters); ``overflow`` counts events
  dropped because ``head - tail == cap``.

Threads: the event and connection callbacks (made per :class:`~capar.ca.context.CAContext` by
:func:`_event_callback` / :func:`_connect_callback`, closures over that context's ``monitor_subs`` /
``monitor_channels`` tables) run on libca's threads.  The event callback does a dict lookup, one slice copy of the struct (see :func:`_address_space`) and one index store under
``MonitorCore.lock`` (a plain Lock, held for those few operations only), and sets ``MonitorCore.event``
only when a consumer waits for that many events (``wake_at``).  libca's threads keep their Python thread
state between callbacks ("Thread-state pinning" below), which alone divides the cost of an event by four.
Consumers (:meth:`MonitorCore.drain`) copy the filled slots out *without* the lock -- the producer never
writes a slot that has not been consumed -- and advance ``tail`` under it.  Decoding (timestamps to POSIX
seconds, values to float64) is vectorised over a whole batch (:func:`decode`).

With capar's compiled core (:mod:`capar.ca.core`), the ring, its counters, lock and wake-up live in C and the
subscriptions of numeric scalar PVs get the core's C callback: libca's thread copies the event into the
ring without entering Python (the layout is the same, so :meth:`MonitorCore.drain` and :func:`decode`
do not change).  String and array events and connection events are still written by Python, through
the core's ``ring_push`` under ``MonitorCore.pylock``, which the consumer also takes to read the ring's
bounds, so an object is always stored before its row can be drained.

Subscriptions are created on a channel's first connection (from the connection callback, with the TIME
type of the native type); libca re-installs them by itself after a reconnection.  Neither callback ever
takes a context's or the registry's lock, so :func:`capar.ca.finalize_libca` (which holds the registry lock
while each context closes its Monitors) cannot deadlock with a callback in progress.
"""
from __future__ import annotations

import ctypes
import logging
import struct
import sys
import threading
import time
from itertools import repeat
from typing import Any, Optional, Sequence

import numpy as np

from . import dbr, errors
from .context import CAContext, current
from .core import pack_names
from .binding import ConnectionCallback, EventCallback, ThreadExitCallback, evid_t

__all__ = ["MonitorCore", "decode", "ROW", "KIND_VALUE", "KIND_CONNECTED", "KIND_DISCONNECTED"]

log = logging.getLogger("capar")

ROW = 24  # bytes per ring row: sizeof(struct dbr_time_double), the largest scalar TIME struct
KIND_VALUE, KIND_CONNECTED, KIND_DISCONNECTED = 0, 1, 2
MODE_SCALAR, MODE_STRING, MODE_ARRAY, MODE_STRINGS = 0, 1, 2, 3  # numeric scalar, str, ndarray, list of str
_HEADER = 12  # status, severity, secs, nsec
_COMM_ALARM, _INVALID_ALARM = 9, 3  # menuAlarmStat COMM / menuAlarmSevr INVALID (for disconnections)
_NORMAL = errors.ECA.NORMAL
_NEVER = 1 << 62  # wake_at when no consumer waits
_C_SLICE = 0.1  # seconds: longest wait inside the compiled core (Ctrl-C is seen between two)
_memmove = ctypes.memmove
_string_at = ctypes.string_at
_HEADER_STRUCT = struct.Struct("<hhII")  # status, severity, secs, nsec: a row's header

# value of each scalar TIME struct, as (view dtype, column) of a (n, 24) uint8 row array
_VALUE_COLUMN = {
    dbr.DOUBLE: ("<f8", 2), dbr.LONG: ("<i4", 3), dbr.FLOAT: ("<f4", 3),
    dbr.SHORT: ("<i2", 7), dbr.ENUM: ("<u2", 7), dbr.CHAR: ("u1", 15),
}


def _address_space() -> Optional[memoryview]:
    """A byte memoryview over the whole address space (64-bit hosts), so that the event callback copies
    a DBR struct with one slice assignment ``ring[o:o+n] = _MEM[src:src+n]`` -- no foreign call, about
    half a microsecond cheaper than ``ctypes.memmove``.  None on 32-bit hosts (memmove is used then)."""
    if sys.maxsize < 2**62:
        return None
    return memoryview((ctypes.c_char * sys.maxsize).from_address(0)).cast("B")


_MEM = _address_space()

# Thread-state pinning.  A ctypes callback on a thread Python did not create (libca's receive threads)
# creates a fresh PyThreadState on entry and destroys it on return -- about 8 us per call, three times
# everything else an event costs.  The first event on such a thread takes one extra PyGILState_Ensure
# that is never released, so the thread state persists and later callbacks only take/release the GIL.
# A circuit's receive thread ends with its circuit (IOC restart, disconnect): the pin registers libCom's
# epicsAtThreadExit, whose callback (run by ctypes with one Ensure of its own) releases the pinned Ensure;
# ctypes' final Release then deletes the thread state, so nothing is left behind.
_tls = threading.local()          # lives in the thread state: "pinned" present <=> this thread is pinned
_gil_ensure = ctypes.pythonapi.PyGILState_Ensure  # PyGILState_STATE (int) PyGILState_Ensure(void)
_gil_release = ctypes.pythonapi.PyGILState_Release
_gil_release.argtypes = [ctypes.c_int]
_gil_release.restype = None


def _unpin(state: Optional[int]) -> None:
    _gil_release(int(state or 0))


def _pin_thread(ctx: CAContext) -> None:
    state = _gil_ensure()
    _tls.pinned = True
    unpin = ctx.c_callback("monitor_unpin", lambda _ctx: ThreadExitCallback(_unpin))
    ctx.lib.epicsAtThreadExit(unpin, state)


# --------------------------------------------------------------------------------------------------
# C callbacks (libca threads), one pair per context.  Keep them minimal: on_event runs once per event.

def _event_callback(ctx: CAContext) -> Any:
    subs = ctx.monitor_subs
    mem = _MEM

    def on_event(args: Any) -> None:
        if ctx.closed:
            return
        try:
            _tls.pinned
        except AttributeError:
            _pin_thread(ctx)
        ent = subs.get(args.usr)
        if ent is None:
            return
        core, i, off, size, mode = ent
        if args.status != _NORMAL:
            return
        src = args.dbr
        if not src:
            return
        if mode:
            core.push_object(i, args, src, mode)
            return
        with core.lock:
            if core.closed:
                return
            h = core.head
            p = h - core.tail
            if p >= core.cap:
                core.overflow += 1
                return
            slot = h % core.cap
            o = slot * ROW + off
            if mem is not None:
                core.rawmv[o:o + size] = mem[src:src + size]
            else:  # pragma: no cover - 32-bit hosts
                _memmove(core.base + o, src, size)
            core.codes[slot] = i
            core.head = h + 1
            if p >= core.wake_at:
                core.wake_at = _NEVER
                core.event.set()

    return EventCallback(on_event)


def _connect_callback(ctx: CAContext) -> Any:
    chans = ctx.monitor_channels

    def on_connect(args: Any) -> None:
        if ctx.closed:
            return
        ent = chans.get(ctx.lib.ca_puser(args.chid))
        if ent is None:
            return
        core, i = ent
        core.on_connection(i, args.chid, args.op == dbr.OP_CONN_UP)

    return ConnectionCallback(on_connect)


def _wait_in_core(accel: Any, ring: int, wake_at: int, timeout: float) -> int:
    """Wait on the compiled core's ring for at most *timeout* seconds, in slices (Python runs a Ctrl-C
    handler only between two C calls).  Never enters libca: :func:`capar.ca.context.finalize_libca` does
    not wait for a thread that is here (it knows this function by name)."""
    return accel.ring_wait(ring, wake_at, min(timeout, _C_SLICE))


# --------------------------------------------------------------------------------------------------

class MonitorCore:
    """Channels + subscriptions + event ring of one :class:`capar.Monitor` (see module docstring).

    names : PV names as bytes; None entries are never created (reported as never connected).
    form : 'time' or 'native'.  count : max elements of array PVs (None: the server's current length).
    mask : DBE mask.  queue_size : ring capacity (events).  ctx : the context to create the channels in
    (default: the calling thread's).
    """

    __slots__ = (
        "lock", "event", "closed", "head", "tail", "cap", "base", "rawmv", "codes", "raw", "objs", "overflow",
        "wake_at", "n", "form", "count", "mask", "ctx", "context", "keys", "chids", "evids", "connected",
        "ever", "subscribed", "vtype", "mode", "nelm", "errors", "sub_lock", "n_ever", "all_connected",
        "has_objects", "n_channels", "released", "accel", "ring", "slots", "pylock", "codes_array",
        "ring_freeable", "__weakref__",
    )

    def __init__(self, names: Sequence[Optional[bytes]], form: str = "time", count: Optional[int] = None,
                 mask: Optional[int] = None, queue_size: int = 100_000, ctx: Optional[CAContext] = None) -> None:
        if form not in ("time", "native"):
            raise ValueError(f"form must be 'time' or 'native', not {form!r}")
        cap = int(queue_size)
        if cap < 1:
            raise ValueError(f"queue_size must be >= 1, not {queue_size!r}")
        n = len(names)
        self.n = n
        self.form = form
        self.count = None if not count else int(count)
        self.mask = int(mask) if mask else (dbr.DBE_VALUE | dbr.DBE_ALARM)
        # ring
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.closed = False
        self.released = False
        self.wake_at = _NEVER
        self.head = 0
        self.tail = 0
        self.overflow = 0
        self.cap = cap
        self.raw = np.zeros((cap, ROW), dtype=np.uint8)
        self.base = self.raw.ctypes.data
        self.rawmv = memoryview(self.raw).cast("B")
        codes = np.zeros(cap, dtype=np.int64)
        self.codes_array = codes
        self.codes = memoryview(codes)  # int setitem on a memoryview: no numpy scalar per event
        self.objs: list[Any] = [None] * cap
        self.has_objects = False
        # per PV
        self.chids = np.zeros(n, dtype=np.uintp)
        self.evids = np.zeros(n, dtype=np.uintp)
        self.connected = np.zeros(n, dtype=bool)
        self.ever = np.zeros(n, dtype=bool)
        self.subscribed = np.zeros(n, dtype=bool)
        self.vtype = np.full(n, -1, dtype=np.int8)   # native type of scalar numeric PVs, -1 otherwise
        self.mode = np.full(n, -1, dtype=np.int8)    # MODE_* once subscribed
        self.nelm = np.zeros(n, dtype=np.int64)
        self.errors: dict[int, str] = {}
        self.sub_lock = threading.Lock()
        self.n_ever = 0
        self.all_connected = threading.Event()
        self.ctx = ctx = ctx if ctx is not None else current()
        # the compiled core's ring (None: the pure-Python ring above)
        self.accel = accel = ctx.core
        self.pylock = threading.Lock()
        self.ring_freeable = False
        self.ring = self.slots = None
        if accel is not None:
            self.ring = accel.check_alloc(accel.ring_new(self.base, codes.ctypes.data, cap), "a monitor ring")
            self.slots = accel.check_alloc(accel.slots_new(self.ring, n), "monitor slots")
        # channels
        self.context = ctx.handle
        lib = ctx.attach()
        conn_cb = ctx.c_callback("monitor_connect", _connect_callback)
        self.keys = [ctx.new_key() for _ in range(n)]
        chans = ctx.monitor_channels
        for i, key in enumerate(self.keys):
            chans[key] = (self, i)
        live = [i for i, nm in enumerate(names) if nm is not None]
        self.n_channels = len(live)
        if not live:
            self.all_connected.set()
        conn_ptr = ctypes.cast(conn_cb, ctypes.c_void_p).value
        base, step = self.chids.ctypes.data, self.chids.itemsize
        if accel is not None:
            packed, offsets = pack_names([names[i] for i in live])
            pusers = np.asarray([self.keys[i] for i in live], dtype=np.uintp)
            chids = np.zeros(len(live), dtype=np.uintp)
            st = np.zeros(len(live), dtype=np.int32)
            accel.create(accel.fns, len(live), packed, offsets.ctypes.data, conn_ptr, pusers.ctypes.data, 0,
                         chids.ctypes.data, st.ctypes.data)
            self.chids[live] = chids
            status = st.tolist()
        else:
            status = list(map(lib.raw_ca_create_channel, [names[i] for i in live], repeat(conn_ptr),
                              [self.keys[i] for i in live], repeat(0), [base + i * step for i in live]))
        failed = [i for i, st in zip(live, status) if st != _NORMAL]
        for i, st in zip(live, status):
            if st != _NORMAL:
                self.errors[i] = f"ca_create_channel: {errors.eca_message(st)}"
        if failed:
            with self.sub_lock:
                self.n_channels -= len(failed)
                if self.n_ever >= self.n_channels:
                    self.all_connected.set()
        lib.ca_flush_io()

    # -- libca thread ---------------------------------------------------------------------------------
    def push_object(self, i: int, args: Any, src: int, mode: int) -> None:
        """Event of a string/array PV: header into the ring row, a copied value into ``objs``."""
        cnt = args.count
        if self.form == "time":
            voff = dbr.value_offset(args.type)
        else:
            voff = 0
        if mode == MODE_STRING or mode == MODE_STRINGS:
            raw = _string_at(src + voff, dbr.MAX_STRING_SIZE * cnt)
            items = [dbr.c_string(raw[k:k + dbr.MAX_STRING_SIZE])
                     for k in range(0, len(raw), dbr.MAX_STRING_SIZE)]
            value: Any = items if mode == MODE_STRINGS else (items[0] if items else "")
        else:
            dt = dbr.value_dtype(args.type)
            value = np.empty(cnt, dtype=dt)
            if cnt:
                _memmove(value.ctypes.data, src + voff, cnt * dt.itemsize)
        self._push(i, _string_at(src, _HEADER) if self.form == "time" else None, value)

    def push_connection(self, i: int, up: bool) -> None:
        """A connection (kind 1) or disconnection (kind 2) event, stamped with the local time."""
        now = time.time()
        secs = int(now - dbr.EPICS2UNIX_EPOCH)
        nsec = int((now - int(now)) * 1e9)
        status, sev = (0, 0) if up else (_COMM_ALARM, _INVALID_ALARM)
        self._push(-1 - 2 * i - (0 if up else 1), _HEADER_STRUCT.pack(status, sev, secs, nsec))

    def _push(self, code: int, header: Optional[bytes], obj: Any = None) -> None:
        """One row written by Python (strings, arrays, connections): *code*, the 12-byte *header* (status,
        severity, time stamp; None leaves it) and *obj* into ``objs``, on the core's ring or the Python one."""
        if self.accel is not None:
            with self.pylock:  # the consumer reads the bounds under it: the object is there before the row
                slot = self.accel.ring_push(self.ring, code, header, _HEADER if header is not None else 0)
                if slot >= 0 and obj is not None:
                    self.objs[slot] = obj
            return
        with self.lock:
            if self.closed:
                return
            h = self.head
            p = h - self.tail
            if p >= self.cap:
                self.overflow += 1
                return
            slot = h % self.cap
            if header is not None:
                self.rawmv[slot * ROW:slot * ROW + _HEADER] = header
            if obj is not None:
                self.objs[slot] = obj
            self.codes[slot] = code
            self.head = h + 1
            if p >= self.wake_at:
                self.wake_at = _NEVER
                self.event.set()

    def on_connection(self, i: int, chid: int, up: bool) -> None:
        with self.sub_lock:
            if self.closed:
                return
            self.connected[i] = up
            self.push_connection(i, up)
            if up and not self.ever[i]:
                self.ever[i] = True
                self.n_ever += 1
                if self.n_ever >= self.n_channels:
                    self.all_connected.set()
            if up and not self.subscribed[i]:
                self.subscribed[i] = True
                try:
                    self._subscribe(i, chid)
                except Exception as exc:  # never propagate into libca
                    self.errors[i] = f"subscription failed: {exc}"
                    log.warning("capar: monitor subscription of PV #%d failed: %s", i, exc)

    def _subscribe(self, i: int, chid: int) -> None:
        ctx = self.ctx
        lib = ctx.lib
        native = int(lib.ca_field_type(chid))
        nelm = int(lib.ca_element_count(chid))
        if native < 0:
            self.subscribed[i] = False  # disconnected again meanwhile; retry on the next connection
            return
        eff = nelm if self.count is None else min(self.count, max(nelm, 1))
        array = eff > 1 or (nelm > 1 and self.count is None)
        if native == dbr.STRING:
            mode = MODE_STRINGS if array else MODE_STRING
        elif array:
            mode = MODE_ARRAY
        else:
            mode = MODE_SCALAR
        # count 0 asks for the server's current length (variable-length arrays)
        req = (0 if self.count is None else eff) if array else 1
        self.nelm[i] = nelm
        self.mode[i] = mode
        ptype = dbr.promote_type(native, use_time=self.form == "time")
        if mode == MODE_SCALAR:
            self.vtype[i] = native
            if self.form == "time":
                off, size = 0, dbr.dbr_size_n(ptype, 1)
            else:  # the bare value goes where the TIME struct would hold it: one decoder for both forms
                off = dbr.value_offset(dbr.promote_type(native, use_time=True))
                size = dbr.value_dtype(native).itemsize
        else:
            self.has_objects = True
            off, size = 0, 0
        key = self.keys[i]
        evid = evid_t()
        accel = self.accel
        if accel is not None and mode == MODE_SCALAR:  # libca's thread writes the ring in C
            accel.slot_set(self.slots, i, off, size)
            lib.ca_create_subscription(ptype, req, chid, self.mask, accel.on_event,
                                       self.slots + i * accel.slot_bytes, ctypes.byref(evid))
        else:
            ctx.monitor_subs[key] = (self, i, off, size, mode)
            lib.ca_create_subscription(ptype, req, chid, self.mask, ctx.c_callback("monitor_event", _event_callback),
                                       key, ctypes.byref(evid))
        self.evids[i] = evid.value or 0

    def timeout_unconnected(self) -> np.ndarray:
        """Report every never-connected PV once as disconnected (kind 2); returns their indices."""
        with self.sub_lock:
            never = np.flatnonzero(~self.ever)
            if not self.closed:
                for i in never.tolist():
                    self.push_connection(i, False)
        return never

    # -- consumer side ------------------------------------------------------------------------------
    def wait_connected(self, timeout: float) -> bool:
        """Wait until every created channel has connected once, at most *timeout* seconds."""
        ev = self.all_connected
        return self.ctx.wait_until(ev.is_set, time.monotonic() + max(timeout, 0.0), ev.wait)

    def pending(self) -> int:
        """Events written and not drained yet."""
        if self.accel is not None:
            return int(self.accel.ring_pending(self.ring))
        return self.head - self.tail

    def overflow_count(self) -> int:
        """Events dropped since the previous drain because the ring was full."""
        if self.accel is not None:
            return int(self.accel.ring_head(self.ring).overflow)
        return self.overflow

    def _wait(self, wake_at: int, timeout: float) -> None:
        """Wait up to *timeout* seconds until more than *wake_at* events are pending (or close())."""
        if self.accel is not None:
            accel, ring = self.accel, self.ring
            if self.closed or accel.ring_pending(ring) > wake_at:
                return
            if self.ctx.alive:
                self.ctx.wait_until(lambda: self.closed or accel.ring_pending(ring) > wake_at,
                                    time.monotonic() + timeout, lambda t: _wait_in_core(accel, ring, wake_at, t))
            else:  # closed, forked or finalized: nothing will come (close() wakes the ring)
                end = time.monotonic() + timeout
                while not self.closed and time.monotonic() < end:
                    _wait_in_core(accel, ring, wake_at, end - time.monotonic())
            return
        with self.lock:
            if self.closed or self.head - self.tail > wake_at:
                return
            self.wake_at = wake_at
            self.event.clear()
        try:
            if self.ctx.alive:
                self.ctx.wait_until(self.event.is_set, time.monotonic() + timeout, self.event.wait)
            else:  # closed, forked or finalized: nothing will come (close() sets the event)
                self.event.wait(timeout)
        finally:
            with self.lock:
                self.wake_at = _NEVER

    def drain(self, timeout: float, latency: float = 0.0, since: float = 0.0
              ) -> Optional[tuple[np.ndarray, np.ndarray, Optional[list], int]]:
        """Take every event written so far, waiting up to *timeout* seconds for the first one.

        latency : seconds -- once events are pending, keep gathering until *latency* seconds after the
            first one was seen or after *since* (time.monotonic() of the previous drain), whichever is
            later, unless the ring gets half full or *timeout* expires.  Fewer, larger batches.
        Returns (codes, raw rows, objects or None, overflow since the previous drain) -- copies -- or
        None when nothing arrived.
        """
        start = time.monotonic()
        deadline = start + max(timeout, 0.0)
        ready = since + latency  # events already pending: at most one batch per *latency*
        if self.accel is not None:
            return self._drain_ring(deadline, latency, ready)
        if self.head == self.tail and not self.closed:
            self._wait(0, deadline - start)
            ready = time.monotonic() + latency  # woken by the first event: gather for *latency*
        if latency > 0 and not self.closed and self.head != self.tail:
            ready = min(ready, deadline)
            now = time.monotonic()
            if ready > now:
                self._wait(self.cap // 2, ready - now)
        with self.lock:
            h, t = self.head, self.tail
        c, r, objs, n = self._copy_out(h, t)
        if n <= 0:
            return None
        with self.lock:
            self.tail = t + n
            ov = self.overflow
            self.overflow = 0
        return c, r, objs, ov

    def _drain_ring(self, deadline: float, latency: float, ready: float
                    ) -> Optional[tuple[np.ndarray, np.ndarray, Optional[list], int]]:
        """:meth:`drain` on the compiled core's ring (the same steps, its counters in C)."""
        accel, ring = self.accel, self.ring
        if not accel.ring_pending(ring) and not self.closed:
            self._wait(0, deadline - time.monotonic())
            ready = time.monotonic() + latency
        if latency > 0 and not self.closed and accel.ring_pending(ring):
            ready = min(ready, deadline)
            now = time.monotonic()
            if ready > now:
                self._wait(self.cap // 2, ready - now)
        bounds = (ctypes.c_uint64 * 2)()
        with self.pylock:  # see push_object
            accel.ring_bounds(ring, bounds)
        c, r, objs, n = self._copy_out(bounds[0], bounds[1])
        if n <= 0:
            return None
        return c, r, objs, int(accel.ring_consume(ring, n))

    def _copy_out(self, h: int, t: int) -> tuple[Any, Any, Optional[list], int]:
        """Copies of rows t..h (counters) of the ring, and their objects (slots emptied); n = h - t."""
        n = h - t
        if n <= 0:
            return None, None, None, 0
        cap = self.cap
        s = t % cap
        e = s + n
        codes = self.codes_array
        if e <= cap:
            c = codes[s:e].copy()
            r = self.raw[s:e].copy()
            objs = self.objs[s:e] if self.has_objects else None
            if objs is not None:
                self.objs[s:e] = repeat(None, n)
        else:
            e -= cap
            c = np.concatenate((codes[s:], codes[:e]))
            r = np.concatenate((self.raw[s:], self.raw[:e]))
            objs = (self.objs[s:] + self.objs[:e]) if self.has_objects else None
            if objs is not None:
                self.objs[s:] = repeat(None, cap - s)
                self.objs[:e] = repeat(None, e)
        return c, r, objs, n

    # -- teardown -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Clear subscriptions, then channels; idempotent.  Callbacks return at once from now on."""
        with self.sub_lock:  # waits for a connection callback that is creating a subscription
            if self.released:
                return
            self.released = True
            with self.lock:
                self.closed = True
                self.wake_at = _NEVER
                self.event.set()
            if self.accel is not None:
                self.accel.ring_close(self.ring)
        ctx = self.ctx
        try:
            if ctx.alive:
                lib = ctx.attach()
                evids = self.evids[self.evids != 0].tolist()
                list(map(lib.ca_clear_subscription, evids))
                chids = self.chids[self.chids != 0].tolist()
                list(map(lib.ca_clear_channel, chids))
                lib.ca_flush_io()
                # no subscription can call the core's callback with this ring any more: freed with self
                self.ring_freeable = self.accel is not None
        finally:
            subs, chans = ctx.monitor_subs, ctx.monitor_channels
            for key in self.keys:
                subs.pop(key, None)
                chans.pop(key, None)

    def abandon(self) -> None:
        """Stop delivering now and leave the libca clean-up to the context (its next owner made, or
        ``clear_cache``): safe from ``__del__``, takes no lock and calls nothing in libca."""
        self.closed = True
        if self.accel is not None:
            self.accel.ring_close(self.ring)  # a mutex and a flag: no libca call
        self.ctx.orphan(self)

    def __del__(self) -> None:
        if self.ring_freeable:  # close() cleared every subscription that could write the ring
            self.ring_freeable = False
            try:
                self.accel.ring_free(self.ring, self.slots)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


def decode(core: MonitorCore, codes: np.ndarray, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised decode of drained rows: index, kind, value (float64, NaN for objects and connection
    events), timestamp (POSIX seconds), status, severity, stamp_ns (the time stamps as EPICS-epoch int64
    nanoseconds, exact; None for the native form)."""
    n = len(codes)
    accel = core.accel
    if accel is not None and n:
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        time_form = core.form == "time"
        cols = {"index": np.empty(n, dtype=np.int64), "kind": np.empty(n, dtype=np.int8),
                "value": np.empty(n), "timestamp": np.empty(n), "status": np.empty(n, dtype=np.int16),
                "severity": np.empty(n, dtype=np.int16),
                "stamp_ns": np.empty(n, dtype=np.int64) if time_form else None}
        accel.decode(raw.ctypes.data, codes.ctypes.data, n, core.vtype.ctypes.data, int(time_form),
                     *(cols[k].ctypes.data if cols[k] is not None else None for k in (
                         "index", "kind", "value", "timestamp", "status", "severity", "stamp_ns")))
        return cols
    neg = codes < 0
    if neg.any():
        m = -1 - codes[neg]
        index = codes.copy()
        index[neg] = m >> 1
        kind = np.zeros(n, dtype=np.int8)
        kind[neg] = 1 + (m & 1)
    else:
        index = codes
        kind = np.zeros(n, dtype=np.int8)
    vt = core.vtype[index]
    vt[neg] = -1
    lo = int(vt.min()) if n else -1
    if lo >= 0 and lo == int(vt.max()):  # the usual batch: value events of one native type
        fmt, col = _VALUE_COLUMN[lo]
        value = raw.view(fmt)[:, col].astype(np.float64)
    else:
        value = np.full(n, np.nan)
        for native, (fmt, col) in _VALUE_COLUMN.items():
            sel = vt == native
            if sel.any():
                value[sel] = raw[sel].view(fmt)[:, col]
    words = raw.view("<u4")
    halves = raw.view("<i2")
    stamp_ns = None
    if core.form == "time":
        timestamp = dbr.to_posix(words[:, 1], words[:, 2])
        stamp_ns = words[:, 1].astype(np.int64) * 1_000_000_000 + words[:, 2]
        status = halves[:, 0].copy()
        severity = halves[:, 1].copy()
    else:
        timestamp = np.full(n, np.nan)
        status = np.zeros(n, dtype=np.int16)
        severity = np.zeros(n, dtype=np.int16)
        if neg.any():
            timestamp[neg] = dbr.to_posix(words[neg, 1], words[neg, 2])
            status[neg] = halves[neg, 0]
            severity[neg] = halves[neg, 1]
    return {"index": index.astype(np.int64, copy=False), "kind": kind, "value": value,
            "timestamp": timestamp, "status": status, "severity": severity, "stamp_ns": stamp_ns}
