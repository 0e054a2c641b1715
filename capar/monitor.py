"""``Monitor``: thousands of subscriptions delivered as numpy batches, with every update kept.

::

    with capar.Monitor([P + f"c{i}" for i in range(5000)]) as mon:
        for batch in mon:                       # one Batch per wait (``mon.timeout`` seconds each)
            for i, v in zip(batch.index, batch.value): ...

Each PV gets one subscription (TIME type of its native type).  libca's thread writes every event into a
preallocated ring (:mod:`capar.ca.monitor`); :meth:`Monitor.get_batch` takes everything written since the
previous batch as column arrays.  Events that do not fit the ring (``queue_size``) are dropped and
*counted* (``Batch.overflow``, ``Monitor.overflow``), never silently lost.

Connection changes are events too: ``kind`` 1 (connected) and 2 (disconnected), with NaN value, the local
time as timestamp and, for disconnections, status COMM / severity INVALID.  A PV that does not connect
within ``connection_timeout`` gets one kind-2 event; after an IOC restart every PV reports kind 2, then
kind 1 and values again, without user action.

Threads: libca's threads fill the ring; batches are built in the calling thread (or, with ``callback=``,
in a daemon thread owned by the Monitor).  Use one consumer per Monitor: either iterate / call
``get_batch`` or give a callback.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from .ca.channel import check_name, check_names
from .ca.context import current
from .ca.errors import seconds
from .ca.monitor import (
    KIND_CONNECTED, KIND_DISCONNECTED, KIND_VALUE, MonitorCore, decode,
)

__all__ = ["Monitor", "Batch", "KIND_VALUE", "KIND_CONNECTED", "KIND_DISCONNECTED"]

log = logging.getLogger("capar")


@dataclass
class Batch:
    """Events delivered since the previous batch, in arrival order (per PV: the order of the updates).

    index : int64 — position in ``Monitor.names`` of each event's PV.
    value : float64 — the value of scalar numeric PVs; NaN for strings, arrays and connection events.
    timestamp : float64 — POSIX seconds (the IOC's time stamp; the local time for connection events).
    status, severity : int16 — alarm status / severity (COMM / INVALID for disconnections).
    values : list or None — per-event Python values (str, list of str, numpy array; floats for numeric
        scalars; None for connection events), only when the Monitor has string or array PVs.
    kind : int8 — 0 value event, 1 connected, 2 disconnected.
    overflow : int — events dropped (ring full) since the previous batch.
    """

    index: np.ndarray
    value: np.ndarray
    timestamp: np.ndarray
    status: np.ndarray
    severity: np.ndarray
    values: Optional[list]
    kind: np.ndarray
    overflow: int = 0
    #: the time stamps as EPICS-epoch nanoseconds (int64), exact where the float cannot be; None if unknown
    stamp_ns: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.index)


class Monitor:
    """Monitor many PVs; events come out as :class:`Batch` column arrays (see module docstring).

    Parameters
    ----------
    names : sequence of str — PV names (duplicates allowed; each position is its own channel).  Invalid
        names are reported like unknown PVs (never connected; see ``errors``).
    form : 'time' (status, severity, IOC timestamp) or 'native' (values only; timestamp NaN).
    count : int or None — maximum elements of array PVs (None: the server's current length).
    queue_size : int — ring capacity in events; events beyond it are dropped and counted.
    mask : int or None — DBE mask (default DBE_VALUE | DBE_ALARM).
    callback : callable(Batch) or None — if given, a daemon thread owned by the Monitor calls it with
        every batch until :meth:`close`.
    connection_timeout : float, seconds — the constructor waits this long at most for every PV to
        connect; PVs still unconnected then get one kind-2 event.
    timeout : float, seconds — how long each wait of the iterator (and of the callback thread) lasts.
    latency : float, seconds — batching: a batch is returned at most *latency* seconds after its first
        event (or the previous batch), earlier when the ring is half full.  Larger values give fewer,
        bigger batches (less CPU per event); 0 returns whatever is there as soon as anything is.
    """

    def __init__(self, names: Iterable[str], form: str = "time", count: Optional[int] = None,
                 queue_size: int = 100_000, mask: Optional[int] = None,
                 callback: Optional[Callable[[Batch], Any]] = None, connection_timeout: float = 5.0,
                 timeout: float = 1.0, latency: float = 0.005) -> None:
        self._core: Optional[MonitorCore] = None
        checked_names, name_errors = check_names(names)
        if count is not None and (not isinstance(count, (int, np.integer)) or count < 0):
            raise ValueError(f"count must be a non-negative int or None, not {count!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self.names: list[str] = checked_names
        self.form = form
        self.timeout = seconds(timeout)
        self.latency = float(latency)
        self._last_drain = 0.0
        self.connection_timeout = seconds(connection_timeout, "connection_timeout")
        self._name_errors: dict[int, str] = {i: e for i, e in enumerate(name_errors) if e is not None}
        encoded: list[Optional[bytes]] = [None if e is not None else check_name(n).encode("utf-8")
                                          for n, e in zip(self.names, name_errors)]
        ctx = current()
        ctx.close_orphans()
        self._overflow_seen = 0
        self._consume_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._callback = callback
        self._core = core = MonitorCore(encoded, form=form, count=count, mask=mask, queue_size=queue_size,
                                        ctx=ctx)
        ctx.adopt(self)  # closed by clear_cache and at exit
        try:
            core.wait_connected(self.connection_timeout)
            core.timeout_unconnected()
        except BaseException:
            self.close()
            raise
        if callback is not None:
            self._thread = threading.Thread(target=self._run_callback, name="capar-monitor", daemon=True)
            self._thread.start()

    # -- state ---------------------------------------------------------------------------------------
    @property
    def connected(self) -> np.ndarray:
        """bool per PV: connected right now."""
        return self._core.connected.copy() if self._core is not None else np.zeros(len(self.names), bool)

    @property
    def overflow(self) -> int:
        """Events dropped so far because the ring was full (delivered in batches or not yet)."""
        core = self._core
        return self._overflow_seen + (core.overflow_count() if core is not None else 0)

    @property
    def pending(self) -> int:
        """Events waiting in the ring."""
        return self._core.pending() if self._core is not None else 0

    @property
    def closed(self) -> bool:
        return self._core is None or self._core.closed

    @property
    def errors(self) -> dict[int, str]:
        """Per-PV problems: invalid names, failed channel creation or subscription (index -> text)."""
        out = dict(self._name_errors)
        if self._core is not None:
            out.update(self._core.errors)
        return out

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{int(self.connected.sum())}/{len(self)} connected"
        return f"<Monitor {len(self)} PVs, {state}>"

    # -- consuming -----------------------------------------------------------------------------------
    def get_batch(self, timeout: float = 1.0) -> Optional[Batch]:
        """Every event since the previous batch; waits up to *timeout* seconds for the first one.

        Returns None when nothing arrived (or the Monitor is closed and drained).
        """
        core = self._core
        if core is None:
            return None
        with self._consume_lock:
            got = core.drain(seconds(timeout), self.latency, self._last_drain)
            self._last_drain = time.monotonic()
            if got is None:
                return None
            codes, raw, objs, ov = got
            self._overflow_seen += ov
        cols = decode(core, codes, raw)
        values = None
        if objs is not None:
            values = [o if o is not None else (v if k == KIND_VALUE else None)
                      for o, v, k in zip(objs, cols["value"].tolist(), cols["kind"].tolist())]
        return Batch(index=cols["index"], value=cols["value"], timestamp=cols["timestamp"],
                     status=cols["status"], severity=cols["severity"], values=values, kind=cols["kind"],
                     overflow=ov, stamp_ns=cols["stamp_ns"])

    def __iter__(self) -> Iterator[Batch]:
        """Yield batches (waiting ``self.timeout`` seconds each time) until :meth:`close`."""
        while True:
            batch = self.get_batch(self.timeout)
            if batch is not None:
                yield batch
            elif self.closed:
                return

    def _run_callback(self) -> None:
        fn = self._callback
        while not self.closed:
            batch = self.get_batch(self.timeout)
            if batch is None:
                continue
            try:
                fn(batch)  # type: ignore[misc]
            except Exception:
                log.exception("capar: Monitor callback raised")

    # -- teardown --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Clear the subscriptions, then the channels, and stop the callback thread; idempotent."""
        core = self._core
        if core is None:
            return
        core.close()
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(max(self.timeout, 1.0) + 5.0)
        core.ctx.owners.discard(self)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None and not core.released:
            core.abandon()  # no libca call here: the next Monitor / clear_cache cleans up
