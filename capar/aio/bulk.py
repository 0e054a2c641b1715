"""capar's bulk path as awaitables: ``await acquire(names)``, ``Group(names)``, ``async for batch in Monitor(names)``.

Threads: :func:`capar.acquire` and :class:`capar.Group` wait with one deadline in the calling thread, so
here they run in the loop's default executor (a worker thread, attached to capar's CA context by its first
CA call) and the loop only awaits their future.  A :class:`Monitor` owns one pump thread that takes batches
from :class:`capar.Monitor` and hands each to the loop with ``loop.call_soon_threadsafe``; at most
``max_batches`` wait in the loop at a time, beyond that the pump stops taking and events wait in the
Monitor's ring (where an overflow is counted, never silent).
"""
from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from typing import Any, Iterable, Optional, Sequence

__all__ = ["acquire", "Group", "Monitor"]

_END: Any = object()


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


async def acquire(names: Iterable[str], form: str = "time", timeout: float = 2.0, connection_timeout: float = 5.0,
                  count: Optional[int] = None, as_string: bool = False, **kwargs: Any) -> Any:
    """:func:`capar.acquire` without blocking the loop: connect every PV (ONE *connection_timeout*
    deadline, seconds), read them all (ONE *timeout* deadline, seconds), close; returns the
    :class:`~capar.Snapshot` (per-PV ``ok``/``error``; nothing raised for dead PVs).

    Runs in the loop's default executor; cancelling the awaiting task does not stop the read, which ends
    by its own deadlines and closes its channels.
    """
    from .. import bulk

    return await _in_thread(bulk.acquire, list(names), form=form, timeout=timeout,
                            connection_timeout=connection_timeout, count=count, as_string=as_string, **kwargs)


class Group:
    """:class:`capar.Group` for asyncio: channels kept connected for repeated reads and writes.

    ``Group(names, ...)`` does no I/O; the channels are created and connected (ONE *connection_timeout*
    deadline, seconds) by ``await group`` / ``async with group`` / the first ``await group.get()``, in the
    loop's default executor.  Operations of one Group run one at a time.  Parameters as
    :class:`capar.Group` (``form`` 'native'/'time'/'ctrl', ``count``, ``as_string``).

    ::

        async with aio.Group(names, form="time") as g:
            snap = await g.get(timeout=1.0)          # Snapshot: numpy columns, per-PV ok/error
            res = await g.put(values, wait=True)     # PutResult
    """

    def __init__(self, names: Iterable[str], form: str = "native", count: Optional[int] = None,
                 as_string: bool = False, connection_timeout: float = 5.0, **kwargs: Any) -> None:
        self.names = list(names)
        self._kwargs = dict(form=form, count=count, as_string=as_string, connection_timeout=connection_timeout,
                            **kwargs)
        self._group: Any = None
        self._lock: Optional[asyncio.Lock] = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._group is not None else "not started")
        return f"<aio.Group {len(self.names)} PVs, {state}>"

    def __len__(self) -> int:
        return len(self.names)

    @property
    def group(self) -> Any:
        """The underlying :class:`capar.Group` (None before :meth:`connect`)."""
        return self._group

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def connect(self) -> "Group":
        """Create and connect the channels (once; ONE ``connection_timeout`` deadline, seconds)."""
        if self._closed:
            raise RuntimeError("this aio.Group is closed")
        async with self._guard():
            if self._group is None:
                from .. import bulk

                self._group = await _in_thread(bulk.Group, self.names, **self._kwargs)
        return self

    def __await__(self) -> Any:
        return self.connect().__await__()

    async def __aenter__(self) -> "Group":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def get(self, timeout: float = 2.0) -> Any:
        """Read every PV with ONE deadline *timeout* (seconds) → :class:`~capar.Snapshot`."""
        await self.connect()
        async with self._guard():
            return await _in_thread(self._group.get, timeout=timeout)

    async def put(self, values: Sequence[Any], wait: bool = False, timeout: float = 60.0, **kwargs: Any) -> Any:
        """Write one value per PV (input order); with *wait*, ONE deadline *timeout* (seconds) for all
        completions → ``PutResult`` (per-PV ok/error)."""
        await self.connect()
        async with self._guard():
            return await _in_thread(self._group.put, values, wait=wait, timeout=timeout, **kwargs)

    async def reconnect(self, timeout: float = 1.0) -> int:
        """Wait up to *timeout* seconds for PVs not yet connected; returns how many are connected."""
        await self.connect()
        async with self._guard():
            return await _in_thread(self._group.reconnect, timeout)

    async def close(self) -> None:
        """Clear the channels (idempotent)."""
        self._closed = True
        if self._group is not None:
            async with self._guard():
                await _in_thread(self._group.close)


def _pump(mon: Any, loop: asyncio.AbstractEventLoop, queue: "asyncio.Queue[Any]", slots: threading.Semaphore,
          stop: threading.Event, wait: float) -> None:
    """The pump thread of an aio.Monitor: batches of *mon* into the loop's *queue* (see module docstring)."""
    try:
        while not stop.is_set():
            if not slots.acquire(timeout=wait):
                continue
            batch = mon.get_batch(wait)
            if batch is None:
                slots.release()
                if mon.closed:
                    break
                continue
            loop.call_soon_threadsafe(queue.put_nowait, batch)
    except RuntimeError:  # the loop is closed
        stop.set()
    except Exception as exc:  # pragma: no cover - a bug: end the iteration with it
        try:
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        except RuntimeError:
            pass
    finally:
        mon.close()
        try:
            loop.call_soon_threadsafe(queue.put_nowait, _END)
        except RuntimeError:
            pass


def _stop_pump(stop: threading.Event) -> None:
    stop.set()  # finalizer: no libca call here; the pump thread closes the Monitor


class Monitor:
    """:class:`capar.Monitor` for asyncio: ``async for batch in Monitor(names)`` yields
    :class:`capar.monitor.Batch` column arrays (index, value, timestamp, status, severity, kind ...).

    The subscriptions are made (waiting at most *connection_timeout* seconds for the connections, in the
    loop's default executor) by ``async with`` or the first iteration.  Parameters as
    :class:`capar.Monitor`; *max_batches*: batches the loop may hold before the pump thread waits.
    Iteration ends after :meth:`close`.  Use ``async with`` so that leaving the loop closes it::

        async with aio.Monitor(names) as mon:
            async for batch in mon:
                ...
    """

    def __init__(self, names: Iterable[str], form: str = "time", count: Optional[int] = None,
                 queue_size: int = 100_000, mask: Optional[int] = None, connection_timeout: float = 5.0,
                 latency: float = 0.005, max_batches: int = 16, wait: float = 0.2) -> None:
        self.names = list(names)
        self._kwargs = dict(form=form, count=count, queue_size=queue_size, mask=mask,
                            connection_timeout=connection_timeout, latency=latency)
        self._max_batches = max(1, int(max_batches))
        self._wait = float(wait)
        self._mon: Any = None
        self._queue: "Optional[asyncio.Queue[Any]]" = None
        self._slots: Optional[threading.Semaphore] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._starting: Optional[asyncio.Lock] = None
        self._ended = False
        weakref.finalize(self, _stop_pump, self._stop)

    def __repr__(self) -> str:
        return f"<aio.Monitor {len(self.names)} PVs, {self._mon!r}>"

    def __len__(self) -> int:
        return len(self.names)

    @property
    def monitor(self) -> Any:
        """The underlying :class:`capar.Monitor` (None before :meth:`start`)."""
        return self._mon

    @property
    def overflow(self) -> int:
        """Events dropped so far because the ring was full."""
        return self._mon.overflow if self._mon is not None else 0

    async def start(self) -> "Monitor":
        """Subscribe (once) and start the pump thread."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._mon is None and not self._stop.is_set():
                from ..ca.context import CAThread
                from ..monitor import Monitor as _Monitor

                loop = asyncio.get_running_loop()
                self._mon = await _in_thread(_Monitor, self.names, timeout=self._wait, **self._kwargs)
                self._queue = asyncio.Queue()
                self._slots = threading.Semaphore(self._max_batches)
                self._thread = CAThread(target=_pump, name="capar-aio-monitor", daemon=True,
                                        args=(self._mon, loop, self._queue, self._slots, self._stop, self._wait))
                self._thread.start()
        return self

    def __aiter__(self) -> "Monitor":
        return self

    async def __anext__(self) -> Any:
        if self._ended:
            raise StopAsyncIteration
        await self.start()
        if self._queue is None:  # closed before it started
            self._ended = True
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        assert self._slots is not None
        self._slots.release()
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aenter__(self) -> "Monitor":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the pump thread and clear the subscriptions; iteration ends at once, batches not yet
        taken are dropped (idempotent)."""
        self._stop.set()
        self._ended = True
        th = self._thread
        if th is not None:
            await _in_thread(th.join)
        elif self._mon is not None:
            await _in_thread(self._mon.close)
