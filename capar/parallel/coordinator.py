"""Coordinator: shard PV lists over local worker processes, run the bulk path in each, merge in input order.

Who owns what:
- The protocol is :mod:`capar.parallel.shard`: typed messages, the :class:`~capar.parallel.shard.ShardServer`
  that runs them in a worker, and the :class:`~capar.parallel.shard.ShardClient` that shards and merges.
  This module only carries the messages: pipes to K local processes.
- The parent owns K worker slots.  Each slot has one process and one duplex Pipe (a worker that dies
  mid-message can only break its own pipe, never a queue shared with the others).  The parent waits on
  every pipe AND every process sentinel at once (``multiprocessing.connection.wait``), so a dead worker is
  noticed immediately; it is replaced, its groups and monitors are re-created and its shard is retried once.
- Each worker owns its libca context and its ShardServer (Groups, Monitors), nothing else; it exits when
  its pipe closes (the parent died) and ignores SIGINT (the parent decides how to stop on Ctrl-C).
- Large arrays come back through shared memory (:mod:`capar.parallel.transport`).
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait as mp_wait
from typing import Any, Optional

from . import transport
from .process import check_main_guard, default_start_method, epics_environment, get_context
from .shard import (
    Message, RemoteError, ShardClient, ShardedGroup, ShardedMonitor, ShardServer, shard_by_index, shard_by_ioc,
    spend,
)

__all__ = ["Coordinator", "ShardedGroup", "ShardedMonitor", "CoordinatorBroken", "RemoteError"]

log = logging.getLogger("capar")

_GRACE = 2.0  # seconds a worker may take beyond a call's deadline before it is declared hung
#: longest wait (seconds) of shard_by='ioc' for the servers of PVs it has not seen connected yet
LOCATE_SECONDS = 1.0
#: ways to split a PV list over the workers (Coordinator(shard_by=...))
SHARD_BY = ("ioc", "index")
_shards, _ioc_shards = shard_by_index, shard_by_ioc  # the older names


class CoordinatorBroken(BrokenProcessPool):
    """The Coordinator cannot run workers any more (replacements keep failing)."""


# ---------------------------------------------------------------------------------------------------
# worker side: (tid, Message) in, (kind, tid, value) out; (tid, None) stops the worker

def _worker_main(conn: Any, env: dict, shm_threshold: Optional[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    send_lock = threading.Lock()

    def send(obj: Any) -> None:
        with send_lock:
            conn.send(obj)

    server = ShardServer(push=lambda gid, batch: send(("batch", gid, batch)), shm_threshold=shm_threshold)
    while True:
        try:
            tid, msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        kind, value = server.handle(msg)
        try:
            send((kind, tid, value))
        except Exception as exc:  # a reply that cannot be pickled: its reason goes back instead
            import traceback

            err = value[0] if kind == "error" else exc
            send(("error", tid, (RuntimeError(repr(err)), traceback.format_exc())))
    server.close()
    conn.close()


# ---------------------------------------------------------------------------------------------------
# parent side

class _Slot:
    __slots__ = ("proc", "conn", "deaths")

    def __init__(self) -> None:
        self.proc: Any = None
        self.conn: Any = None
        self.deaths = 0


class Coordinator(ShardClient):
    """K worker processes that each run the bulk path on a shard of the PV list.

    Parameters
    ----------
    processes : int — number of workers (≥ 1; default: CPU count).
    start_method : 'forkserver' (default on Linux), 'spawn' or 'fork'.
    shm_threshold : int or None, bytes — arrays this large come back through shared memory (None: pickled).
    shard_by : 'index' (default) or 'ioc'.
        'ioc': every PV of one IOC (the server of its connected channel, libca's ``ca_host_name``) is served
        by one worker, whole IOCs balanced over the workers by PV count, so each IOC serves one capar
        circuit instead of one per worker.  The Coordinator learns the servers from its workers: ``get``
        reports them for the next calls, ``connect`` and ``monitor`` first locate PVs whose server is not
        known yet (waiting at most ``LOCATE_SECONDS``, 1 s, before their own *connection_timeout*); PVs
        that did not connect are split evenly over the workers.  'index': contiguous,
        balanced slices of the input list.

    The calls (``get``, ``put``, ``connect``, ``monitor``) are :class:`~capar.parallel.shard.ShardClient`'s.
    """

    locate_seconds = LOCATE_SECONDS

    def __init__(self, processes: Optional[int] = None, start_method: Optional[str] = None,
                 shm_threshold: Optional[int] = transport.DEFAULT_SHM_THRESHOLD, shard_by: str = "index") -> None:
        if shard_by not in SHARD_BY:
            raise ValueError(f"shard_by must be one of {SHARD_BY}, not {shard_by!r}")
        if processes is None:
            processes = os.cpu_count() or 1
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise ValueError(f"processes must be a positive int, not {processes!r}")
        method = start_method or default_start_method()
        self._ctx = get_context(method)
        check_main_guard("Coordinator", method)
        self._init_client()
        self.processes = processes
        self.shard_by = shard_by
        self.shm_threshold = shm_threshold
        self._env = epics_environment()
        self._slots = [_Slot() for _ in range(processes)]
        self._tids = itertools.count(1)
        self._broken: Optional[str] = None
        self._closed = False
        t0 = time.perf_counter()
        try:
            for i in range(processes):
                self._start(i)
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.perf_counter() - t0
        # stops the workers if the Coordinator is dropped without close(), and at interpreter exit
        self._finalizer = weakref.finalize(self, Coordinator._close_slots, self._slots)

    # -- workers -----------------------------------------------------------------------------------
    def _start(self, i: int) -> None:
        slot = self._slots[i]
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self._env, self.shm_threshold),
                                 name=f"capar-worker-{i}", daemon=True)
        proc.start()
        child.close()
        slot.proc, slot.conn = proc, parent

    def _replace(self, i: int) -> None:
        slot = self._slots[i]
        slot.deaths += 1
        self._stop_slot(slot, 0.0)
        try:
            self._start(i)
            self._restore(i)  # the worker's groups and monitors
        except CoordinatorBroken:
            raise
        except Exception as exc:
            self._broken = f"cannot replace worker {i}: {exc}"
            raise CoordinatorBroken(self._broken) from exc

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [s.proc.pid for s in self._slots if s.proc is not None]

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("Coordinator is closed")
        if self._broken:
            raise CoordinatorBroken(self._broken)

    @property
    def _usable(self) -> bool:
        return not self._closed and not self._broken

    def _send_nowait(self, slot: int, msg: Optional[Message]) -> None:
        """Queue *msg* for worker *slot* without waiting for its reply (None stops the worker)."""
        try:
            self._slots[slot].conn.send((0, msg))
        except OSError:
            pass

    # -- request/response --------------------------------------------------------------------------
    def _call(self, msgs: dict[int, Message], deadline: float, retry: bool = True) -> dict[int, Any]:
        """Send one message per slot and wait for the replies until *deadline* (``time.monotonic()``
        seconds) + grace.  Returns {slot: reply}: ("ok", value) | ("error", (exc, tb)) | ("died", reason).

        A worker that dies meanwhile is replaced and, with *retry*, its message sent once more to the
        replacement with what is left of its budgets; one that does not answer by then is replaced and
        reported as "worker timed out".  Ctrl-C (or any error) here stops every worker.
        """
        start = time.monotonic()
        pending = {i: self._send(i, msg) for i, msg in msgs.items()}  # slot -> id of its request
        retried: set[int] = set()
        out: dict[int, Any] = {}
        try:
            while pending:
                ready = self._wait(list(pending), deadline + _GRACE - time.monotonic())
                if not ready:  # hung workers: replace and report, never wait past the deadline
                    for i in list(pending):
                        log.warning("capar: worker %d (pid %s) did not answer in time; replacing it",
                                    i, self._slots[i].proc.pid)
                        out[i] = ("died", "worker timed out")
                        del pending[i]
                        self._replace(i)
                    break
                for i, obj in ready:
                    if i not in pending:
                        continue
                    reply = self._receive(i, obj, pending[i])
                    if reply is None:  # a monitor batch or a stale reply: keep waiting
                        continue
                    del pending[i]
                    if reply[0] != "died":
                        out[i] = reply
                        continue
                    self._replace(i)
                    if retry and i not in retried and time.monotonic() < deadline + _GRACE:
                        retried.add(i)
                        pending[i] = self._send(i, spend(msgs[i], time.monotonic() - start))
                    else:
                        out[i] = reply
                    break  # fds of the replaced worker may be reused: wait again on fresh objects
        except BaseException:
            # Ctrl-C or an internal error mid-request: the workers' state is unknown; stop them all
            self.close(timeout=0.5)
            raise
        return out

    def _send(self, i: int, msg: Message) -> int:
        """Send *msg* to worker *i*; returns the request id (a broken pipe shows as the worker's death)."""
        tid = next(self._tids)
        try:
            self._slots[i].conn.send((tid, msg))
        except (BrokenPipeError, OSError):
            pass  # the sentinel will tell
        return tid

    def _wait(self, slots: list[int], timeout: float) -> list[tuple[int, Any]]:
        """(slot, pipe or sentinel) of *slots* that are readable or ended within *timeout* seconds."""
        waitables = {}
        for i in slots:
            s = self._slots[i]
            waitables[s.conn] = i
            waitables[s.proc.sentinel] = i
        ready = mp_wait(list(waitables), timeout=timeout) if timeout > 0 else []
        return [(waitables[r], r) for r in ready]

    def _receive(self, i: int, obj: Any, tid: Optional[int]) -> Optional[tuple[str, Any]]:
        """Read what worker *i* sent (``obj``: its pipe or its sentinel).  Monitor batches go to the inbox
        and replies to other requests than *tid* are released: None.  A worker that ended (or whose pipe
        broke) is reaped: ``("died", reason)``."""
        s = self._slots[i]
        if obj is s.conn or s.conn.poll():
            try:
                while True:
                    kind, rtid, value = s.conn.recv()
                    if kind == "batch":
                        self._inbox.setdefault(rtid, []).append((i, value))
                    elif tid is not None and rtid == tid:
                        return kind, value
                    elif kind == "ok" and isinstance(value, dict):
                        transport.release(value)  # a stale reply of an abandoned request
                    if not s.conn.poll():
                        return None
            except (EOFError, OSError):
                pass
        s.proc.join(0.5)
        reason = f"worker died (exit code {s.proc.exitcode})"
        log.warning("capar: %s %s; replacing it", reason,
                    "while serving a request" if tid is not None else "while monitoring")
        return "died", reason

    def _pump(self, timeout: float) -> None:
        """Receive streamed monitor batches (and notice dead workers) for up to *timeout* seconds."""
        for i, obj in self._wait([i for i, s in enumerate(self._slots) if s.conn is not None], max(timeout, 1e-9)):
            if self._receive(i, obj, None) is not None:
                self._replace(i)
                return  # fds may be reused by the replacement: the caller waits again

    def close(self, timeout: float = 1.0) -> None:
        """Stop every worker (stop message, then terminate, then kill); idempotent, bounded by ~2 s."""
        if self._closed:
            return
        self._closed = True
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        Coordinator._close_slots(self._slots, timeout)

    @staticmethod
    def _close_slots(slots: list, timeout: float = 1.0) -> None:
        for s in slots:
            if s.conn is not None:
                try:
                    s.conn.send((0, None))
                except Exception:
                    pass
        end = time.time() + timeout
        for s in slots:
            Coordinator._stop_slot(s, max(end - time.time(), 0.0))

    @staticmethod
    def _stop_slot(s: _Slot, timeout: float) -> None:
        p = s.proc
        if p is not None:
            p.join(timeout)
            if p.is_alive():
                p.terminate()
                p.join(0.5)
            if p.is_alive():
                p.kill()
                p.join(0.5)
            try:
                p.close()
            except ValueError:
                pass
        if s.conn is not None:
            s.conn.close()
        s.proc = s.conn = None

    def __enter__(self) -> "Coordinator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("broken" if self._broken else "running")
        return f"<Coordinator {self.processes} workers, {state}>"
