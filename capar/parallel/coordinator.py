"""Coordinator: shard PV lists over worker processes, run the bulk path in each, merge in input order.

Who owns what:
- The parent owns K worker slots.  Each slot has one process and one duplex Pipe (a worker that dies
  mid-message can only break its own pipe, never a queue shared with the others).  The parent waits on
  every pipe AND every process sentinel at once (``multiprocessing.connection.wait``), so a dead worker is
  noticed immediately; it is replaced, its groups are re-created and its shard is retried once.
- Each worker owns its libca context, its Groups, and nothing else; it exits when its pipe closes (the
  parent died) and ignores SIGINT (the parent decides how to stop on Ctrl-C).
- Large arrays come back through shared memory (:mod:`capar.parallel.transport`).
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait as mp_wait
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ..ca.errors import seconds
from ..snapshot import Snapshot
from . import transport
from .process import check_main_guard, default_start_method, epics_environment, get_context

__all__ = ["Coordinator", "ShardedGroup", "ShardedMonitor", "CoordinatorBroken", "WorkerDied"]

log = logging.getLogger("capar")

_GRACE = 2.0  # seconds a worker may take beyond a call's deadline before it is declared hung
#: longest wait (seconds) of shard_by='ioc' for the servers of PVs it has not seen connected yet
LOCATE_SECONDS = 1.0


class CoordinatorBroken(BrokenProcessPool):
    """The Coordinator cannot run workers any more (replacements keep failing)."""


class WorkerDied(RuntimeError):
    """Internal: a worker died or hung while serving a request."""


# ---------------------------------------------------------------------------------------------------
# worker side

def _worker_main(conn: Any, env: dict, shm_threshold: Optional[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    import threading

    from ..bulk import Group

    groups: dict[int, Any] = {}
    monitors: dict[int, tuple] = {}
    send_lock = threading.Lock()

    def send(obj: Any) -> None:
        with send_lock:
            conn.send(obj)

    def stream(gid: int, mon: Any) -> None:
        # ships every batch of this worker's Monitor to the parent as soon as it is built
        while not mon.closed:
            batch = mon.get_batch(timeout=0.2)
            if batch is not None and len(batch):
                try:
                    send(("batch", gid, batch))
                except (OSError, ValueError):
                    return

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        op, tid = msg[0], msg[1]
        try:
            if op == "exit":
                break
            if op == "ping":
                reply: Any = os.getpid()
            elif op == "get":
                _, _, names, form, deadline, conn_deadline, count, as_string, want_hosts = msg
                with Group(names, form=form, count=count, as_string=as_string,
                           connection_timeout=max(conn_deadline - time.time(), 0.0)) as g:
                    snap = g.get(timeout=max(deadline - time.time(), 0.0))
                    snap.elapsed += g.connect_seconds
                    hosts = g.hosts() if want_hosts else None
                reply = transport.pack(snap, shm_threshold)
                reply["hosts"] = hosts
            elif op == "locate":
                _, _, names, conn_deadline = msg
                with Group(names, connection_timeout=max(conn_deadline - time.time(), 0.0)) as g:
                    reply = g.hosts()
            elif op == "connect":
                _, _, gid, names, form, conn_deadline, count, as_string = msg
                old = groups.pop(gid, None)
                if old is not None:
                    old.close()
                g = Group(names, form=form, count=count, as_string=as_string,
                          connection_timeout=max(conn_deadline - time.time(), 0.0))
                groups[gid] = g
                reply = int(g.connected.sum())
            elif op == "gget":
                _, _, gid, deadline = msg
                reply = transport.pack(groups[gid].get(timeout=max(deadline - time.time(), 0.0)), shm_threshold)
            elif op == "gput":
                _, _, gid, values, wait, deadline = msg
                res = groups[gid].put(values, wait=wait, timeout=max(deadline - time.time(), 0.0))
                reply = (res.ok, res.error.tolist())
            elif op == "put":
                _, _, names, values, wait, deadline, conn_deadline = msg
                with Group(names, connection_timeout=max(conn_deadline - time.time(), 0.0)) as g:
                    res = g.put(values, wait=wait, timeout=max(deadline - time.time(), 0.0))
                reply = (res.ok, res.error.tolist())
            elif op == "gclose":
                g = groups.pop(msg[2], None)
                if g is not None:
                    g.close()
                reply = None
            elif op == "mstart":
                _, _, gid, names, form, count, queue_size, latency, conn_deadline = msg
                from ..monitor import Monitor

                mon = Monitor(names, form=form, count=count, queue_size=queue_size, latency=latency,
                              connection_timeout=max(conn_deadline - time.time(), 0.0))
                th = threading.Thread(target=stream, args=(gid, mon), daemon=True, name=f"capar-stream-{gid}")
                th.start()
                monitors[gid] = (mon, th)
                reply = int(mon.connected.sum())
            elif op == "mstop":
                mon, th = monitors.pop(msg[2], (None, None))
                if mon is not None:
                    mon.close()
                    th.join(2.0)
                reply = None
            elif op == "crash":  # test hook: die the way a segfault would
                os._exit(int(msg[2]))
            else:
                raise ValueError(f"unknown op {op!r}")
            send(("ok", tid, reply))
        except BaseException as exc:  # the exception travels back with its traceback text
            import traceback

            try:
                send(("error", tid, (exc, traceback.format_exc())))
            except Exception:
                send(("error", tid, (RuntimeError(repr(exc)), traceback.format_exc())))
    for mon, th in monitors.values():
        mon.close()
        th.join(2.0)
    for g in groups.values():
        g.close()
    conn.close()


# ---------------------------------------------------------------------------------------------------
# parent side

class _Slot:
    __slots__ = ("proc", "conn", "deaths")

    def __init__(self) -> None:
        self.proc: Any = None
        self.conn: Any = None
        self.deaths = 0


class RemoteError(Exception):
    """An exception raised in a worker; the remote traceback is in the message."""


#: ways to split a PV list over the workers (Coordinator(shard_by=...))
SHARD_BY = ("ioc", "index")

Shards = dict  # {worker slot: positions (int64 array, ascending) of the PVs it serves}; no empty shard


def _shards(n: int, k: int) -> Shards:
    """Balanced contiguous slices of range(n) over at most k workers ("index" sharding)."""
    k = max(1, min(k, n))
    bounds = np.linspace(0, n, k + 1).astype(int)
    return {i: np.arange(a, b) for i, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
            if b > a}


def _ioc_shards(names: list[str], hosts: dict[str, str], k: int) -> Shards:
    """Whole IOCs per worker ("ioc" sharding): every PV of one server goes to the same worker.

    Servers are placed largest first on the least-loaded worker (balanced by PV count); PVs whose server
    is not known (never connected) are then split evenly over the workers, in input order.
    """
    n = len(names)
    by_host: dict[str, list[int]] = {}
    unknown: list[int] = []
    for pos, name in enumerate(names):
        host = hosts.get(name)
        if host is None:
            unknown.append(pos)
        else:
            by_host.setdefault(host, []).append(pos)
    k = max(1, min(k, n))
    parts: list[list[int]] = [[] for _ in range(k)]
    for host in sorted(by_host, key=lambda h: (-len(by_host[h]), h)):
        parts[min(range(k), key=lambda i: len(parts[i]))].extend(by_host[host])
    if unknown:  # split evenly (sizes differ by at most one), the larger parts to the lighter workers
        lightest = sorted(range(k), key=lambda i: len(parts[i]))
        for i, chunk in zip(lightest, np.array_split(np.asarray(unknown, dtype=np.int64), k)):
            parts[i].extend(chunk.tolist())
    return {i: np.sort(np.asarray(p, dtype=np.int64)) for i, p in enumerate(parts) if p}


def _take(seq: Sequence[Any], idx: np.ndarray) -> list:
    return [seq[j] for j in idx.tolist()]


def _check_names(names: Iterable[Any]) -> list[str]:
    if isinstance(names, (str, bytes)):
        raise TypeError("names must be a list of PV names, not a single string")
    names = list(names)
    for i, n in enumerate(names):
        if not isinstance(n, str):
            raise TypeError(f"PV name #{i} is a {type(n).__name__}, not a str: {n!r}")
    return names


class Coordinator:
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
    """

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
        self.processes = processes
        self.shard_by = shard_by
        self.shm_threshold = shm_threshold
        self._hosts: dict[str, str] = {}  # PV name -> "host:port" of its server, learned from the workers
        self._env = epics_environment()
        self._slots = [_Slot() for _ in range(processes)]
        self._tids = itertools.count(1)
        self._gids = itertools.count(1)
        self._groups: dict[int, dict[int, tuple]] = {}  # gid -> {slot: group spec}
        self._monitors: dict[int, dict[int, tuple]] = {}  # gid -> {slot: monitor spec}
        self._inbox: dict[int, list] = {}  # gid -> [(slot, Batch)] received while waiting for replies
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
            for gid, per_slot in list(self._groups.items()):  # re-create the worker's groups
                spec = per_slot.get(i)
                if spec is not None:
                    names, form, ctimeout, count, as_string = spec
                    deadline = time.time() + ctimeout
                    self._call({i: ("connect", 0, gid, names, form, deadline, count, as_string)}, deadline,
                               retry=False)
            for gid, per_slot in list(self._monitors.items()):  # ... and its monitors
                spec = per_slot.get(i)
                if spec is not None:
                    names, form, count, queue_size, latency, ctimeout = spec
                    deadline = time.time() + ctimeout
                    self._call({i: ("mstart", 0, gid, names, form, count, queue_size, latency, deadline)},
                               deadline, retry=False)
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

    # -- request/response --------------------------------------------------------------------------
    def _call(self, msgs: dict[int, tuple], deadline: float, retry: bool = True) -> dict[int, Any]:
        """Send one message per slot, wait for replies and sentinels until *deadline* (+ grace).

        Returns {slot: reply} where a reply is ("ok", value) | ("error", exc) | ("died", reason).
        """
        pending: dict[int, int] = {}
        tries: dict[int, int] = {}
        out: dict[int, Any] = {}
        sent: dict[int, tuple] = {}

        def send(i: int) -> None:
            tid = next(self._tids)
            m = msgs[i]
            m = (m[0], tid) + tuple(m[2:])
            sent[i] = m
            try:
                self._slots[i].conn.send(m)
                pending[i] = tid
            except (BrokenPipeError, OSError):
                pending[i] = tid  # the sentinel will tell

        for i in msgs:
            tries[i] = 0
            send(i)
        try:
            while pending:
                remaining = deadline + _GRACE - time.time()
                waitables = {}
                for i in pending:
                    s = self._slots[i]
                    waitables[s.conn] = i
                    waitables[s.proc.sentinel] = i
                ready = mp_wait(list(waitables), timeout=max(remaining, 0.0)) if remaining > 0 else []
                if not ready:  # hung workers: kill and report, never wait past the deadline
                    for i in list(pending):
                        log.warning("capar: worker %d (pid %s) did not answer in time; replacing it",
                                    i, self._slots[i].proc.pid)
                        out[i] = ("died", "worker timed out")
                        pending.pop(i)
                        self._replace(i)
                    break
                for r in ready:
                    i = waitables[r]
                    s = self._slots[i]
                    if i not in pending:
                        continue
                    if r is s.conn or s.conn.poll():
                        try:
                            kind, tid, value = s.conn.recv()
                        except (EOFError, OSError):
                            kind, tid, value = "died", pending[i], None
                        if kind == "batch":
                            self._inbox.setdefault(tid, []).append((i, value))
                            continue
                        if kind != "died":
                            if tid != pending[i]:
                                if kind == "ok" and isinstance(value, dict):
                                    transport.release(value)  # a stale reply of an abandoned request
                                continue
                            pending.pop(i)
                            out[i] = (kind, value)
                            continue
                    # the process ended (or its pipe broke) without answering
                    s.proc.join(0.5)
                    code = s.proc.exitcode
                    pending.pop(i)
                    reason = f"worker died (exit code {code})"
                    log.warning("capar: %s while serving a request; replacing it", reason)
                    self._replace(i)
                    if retry and tries[i] == 0 and time.time() < deadline + _GRACE:
                        tries[i] += 1
                        send(i)
                    else:
                        out[i] = ("died", reason)
                    break  # fds of the replaced worker may be reused: wait again on fresh objects
        except BaseException:
            # Ctrl-C or an internal error mid-request: the workers' state is unknown; stop them all
            self.close(timeout=0.5)
            raise
        return out

    # -- sharding ------------------------------------------------------------------------------------
    def _plan(self, names: list[str]) -> Shards:
        if self.shard_by == "ioc":
            return _ioc_shards(names, self._hosts, self.processes)
        return _shards(len(names), self.processes)

    def _learn(self, names: list[str], hosts: Sequence[Optional[str]]) -> None:
        """Remember the server of each connected PV; forget it for PVs that did not connect."""
        for name, host in zip(names, hosts):
            if host:
                self._hosts[name] = host
            else:
                self._hosts.pop(name, None)

    def _locate(self, names: list[str], connection_timeout: float) -> None:
        """'ioc' sharding: find the servers of PVs not located yet (connect, ask, clear; in the workers).

        Waits at most :data:`LOCATE_SECONDS` (or *connection_timeout*, if shorter): a name no server
        answers would otherwise hold every start for its whole connection timeout twice.  PVs not found
        by then are placed as unknown.
        """
        if self.shard_by != "ioc":
            return
        unknown = list(dict.fromkeys(n for n in names if n not in self._hosts))
        if not unknown:
            return
        conn_deadline = time.time() + min(connection_timeout, LOCATE_SECONDS)
        shards = _shards(len(unknown), self.processes)
        replies = self._call({i: ("locate", 0, _take(unknown, idx), conn_deadline) for i, idx in shards.items()},
                             conn_deadline)
        for i, idx in shards.items():
            kind, value = replies.get(i, ("died", None))
            if kind == "ok":
                self._learn(_take(unknown, idx), value)

    # -- public API ----------------------------------------------------------------------------------
    def get(self, names: Sequence[str], form: str = "time", timeout: float = 2.0,
            connection_timeout: float = 5.0, count: Optional[int] = None, as_string: bool = False) -> Snapshot:
        """Sharded one-shot read; one absolute deadline for every shard (seconds from now)."""
        self._check()
        names = _check_names(names)
        t0 = time.perf_counter()
        now = time.time()
        conn_deadline = now + seconds(connection_timeout, "connection_timeout")
        deadline = conn_deadline + seconds(timeout)
        shards = self._plan(names)
        learn = self.shard_by == "ioc"
        msgs = {i: ("get", 0, _take(names, idx), form, deadline, conn_deadline, count, as_string, learn)
                for i, idx in shards.items()}
        replies = self._call(msgs, deadline)
        if learn:
            for i, idx in shards.items():
                kind, value = replies.get(i, ("died", None))
                if kind == "ok" and value.get("hosts") is not None:
                    self._learn(_take(names, idx), value["hosts"])
        snap = _merge(names, form, shards, replies)
        snap.elapsed = time.perf_counter() - t0
        return snap

    def put(self, names: Sequence[str], values: Sequence[Any], wait: bool = False, timeout: float = 60.0,
            connection_timeout: float = 5.0) -> Any:
        """Sharded bulk put; returns a PutResult (per-PV ok/error) in input order."""
        self._check()
        names = _check_names(names)
        if len(values) != len(names):
            raise ValueError(f"{len(values)} values for {len(names)} PVs")
        now = time.time()
        conn_deadline = now + seconds(connection_timeout, "connection_timeout")
        deadline = conn_deadline + seconds(timeout)
        shards = self._plan(names)
        msgs = {i: ("put", 0, _take(names, idx), _take(values, idx), wait, deadline, conn_deadline)
                for i, idx in shards.items()}
        return _merge_put(names, shards, self._call(msgs, deadline))

    def connect(self, names: Sequence[str], form: str = "time", connection_timeout: float = 5.0,
                count: Optional[int] = None, as_string: bool = False) -> "ShardedGroup":
        """Connect *names* in the workers (kept there) and return a ShardedGroup for repeated reads."""
        self._check()
        names = _check_names(names)
        gid = next(self._gids)
        connection_timeout = seconds(connection_timeout, "connection_timeout")
        self._locate(names, connection_timeout)
        conn_deadline = time.time() + connection_timeout
        shards = self._plan(names)
        msgs = {i: ("connect", 0, gid, _take(names, idx), form, conn_deadline, count, as_string)
                for i, idx in shards.items()}
        self._groups[gid] = {i: (_take(names, idx), form, connection_timeout, count, as_string)
                             for i, idx in shards.items()}
        self._call(msgs, conn_deadline)
        return ShardedGroup(self, gid, names, form, shards)

    def monitor(self, names: Sequence[str], form: str = "time", batch_interval: float = 0.1,
                queue_size: int = 100_000, count: Optional[int] = None,
                connection_timeout: float = 5.0) -> "ShardedMonitor":
        """Monitor *names* in the workers; iterate the result for merged batches (indices in input order).

        batch_interval : float, seconds — each worker ships its events at most this long after they arrive.
        queue_size : int — per-worker ring capacity in events (overflow is counted, see Batch.overflow).
        """
        self._check()
        names = _check_names(names)
        gid = next(self._gids)
        connection_timeout = seconds(connection_timeout, "connection_timeout")
        self._locate(names, connection_timeout)
        deadline = time.time() + connection_timeout
        shards = self._plan(names)
        self._monitors[gid] = {i: (_take(names, idx), form, count, queue_size, batch_interval, connection_timeout)
                               for i, idx in shards.items()}
        msgs = {i: ("mstart", 0, gid, _take(names, idx), form, count, queue_size, batch_interval, deadline)
                for i, idx in shards.items()}
        replies = self._call(msgs, deadline)
        for kind, value in replies.values():
            if kind == "error":
                self._monitors.pop(gid, None)
                _raise_remote(value)
        return ShardedMonitor(self, gid, names, shards)

    def _pump(self, timeout: float) -> None:
        """Receive streamed monitor batches (and notice dead workers) for up to *timeout* seconds."""
        waitables = {}
        for i, s in enumerate(self._slots):
            if s.conn is not None:
                waitables[s.conn] = i
                waitables[s.proc.sentinel] = i
        for r in mp_wait(list(waitables), timeout=max(timeout, 0.0)):
            i = waitables[r]
            s = self._slots[i]
            if r is s.conn or s.conn.poll():
                try:
                    while s.conn.poll():
                        kind, tid, value = s.conn.recv()
                        if kind == "batch":
                            self._inbox.setdefault(tid, []).append((i, value))
                        elif kind == "ok" and isinstance(value, dict):
                            transport.release(value)  # a stale reply of an abandoned request
                    continue
                except (EOFError, OSError):
                    pass
            s.proc.join(0.5)
            log.warning("capar: worker %d died (exit code %s) while monitoring; replacing it", i, s.proc.exitcode)
            self._replace(i)
            return  # fds may be reused by the replacement: the caller waits again

    def close(self, timeout: float = 1.0) -> None:
        """Stop every worker (exit message, then terminate, then kill); idempotent, bounded by ~2 s."""
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
                    s.conn.send(("exit", 0))
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

    # test hook
    def _crash_worker(self, i: int, code: int = 139) -> None:
        try:
            self._slots[i].conn.send(("crash", 0, code))
        except OSError:
            pass


class ShardedGroup:
    """Channels connected in the Coordinator's workers; ``get()`` repeats on them."""

    def __init__(self, coord: Coordinator, gid: int, names: list[str], form: str, shards: Shards) -> None:
        self._coord, self.gid, self.names, self.form, self._shards = coord, gid, names, form, shards
        self.closed = False

    def get(self, timeout: float = 2.0) -> Snapshot:
        """Read every PV; one deadline (*timeout* seconds) for all shards."""
        self._coord._check()
        t0 = time.perf_counter()
        deadline = time.time() + seconds(timeout)
        msgs = {i: ("gget", 0, self.gid, deadline) for i in self._shards}
        snap = _merge(self.names, self.form, self._shards, self._coord._call(msgs, deadline))
        snap.elapsed = time.perf_counter() - t0
        return snap

    def put(self, values: Sequence[Any], wait: bool = False, timeout: float = 60.0) -> Any:
        """Write one value per PV (input order); PutResult with per-PV ok/error."""
        self._coord._check()
        if len(values) != len(self.names):
            raise ValueError(f"{len(values)} values for {len(self.names)} PVs")
        deadline = time.time() + seconds(timeout)
        msgs = {i: ("gput", 0, self.gid, _take(values, idx), wait, deadline) for i, idx in self._shards.items()}
        return _merge_put(self.names, self._shards, self._coord._call(msgs, deadline))

    def close(self) -> None:
        """Release the channels in the workers (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._coord._groups.pop(self.gid, None)
        if not self._coord._closed and not self._coord._broken:
            self._coord._call({i: ("gclose", 0, self.gid) for i in self._shards}, time.time() + 5.0,
                              retry=False)

    def __enter__(self) -> "ShardedGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ShardedMonitor:
    """Batches from every worker's Monitor, merged, with PV indices in the caller's order.

    Iterate (``for batch in mon``) or call :meth:`get_batch`; stop with :meth:`close` or ``with``.
    """

    def __init__(self, coord: Coordinator, gid: int, names: list[str], shards: Shards,
                 timeout: float = 1.0) -> None:
        self._coord, self.gid, self.names, self._shards = coord, gid, names, shards
        self.timeout = timeout
        self.closed = False
        self.overflow = 0

    def get_batch(self, timeout: float = 1.0) -> Optional[Any]:
        """Events that arrived within *timeout* seconds, merged into one Batch (None when there are none)."""
        coord = self._coord
        coord._check()
        deadline = time.time() + seconds(timeout)
        while not coord._inbox.get(self.gid):
            remaining = deadline - time.time()
            if remaining <= 0 or self.closed:
                return None
            coord._pump(remaining)
        coord._pump(0.0)  # whatever else is already there
        parts = coord._inbox.pop(self.gid, [])
        return self._merge(parts) if parts else None

    def _merge(self, parts: list) -> Any:
        from ..monitor import Batch

        batches = [b for _, b in parts]
        overflow = sum(b.overflow for b in batches)
        self.overflow += overflow
        values = None
        if any(b.values is not None for b in batches):
            values = []
            for b in batches:
                values.extend(b.values if b.values is not None else b.value.tolist())
        return Batch(
            index=np.concatenate([self._shards[i][b.index] for i, b in parts]),
            value=np.concatenate([b.value for b in batches]),
            timestamp=np.concatenate([b.timestamp for b in batches]),
            status=np.concatenate([b.status for b in batches]),
            severity=np.concatenate([b.severity for b in batches]),
            values=values, kind=np.concatenate([b.kind for b in batches]), overflow=overflow)

    def __iter__(self) -> Any:
        while not self.closed:
            batch = self.get_batch(self.timeout)
            if batch is not None:
                yield batch

    def close(self) -> None:
        """Unsubscribe in every worker (idempotent)."""
        if self.closed:
            return
        self.closed = True
        coord = self._coord
        coord._monitors.pop(self.gid, None)
        if not coord._closed and not coord._broken:
            coord._call({i: ("mstop", 0, self.gid) for i in self._shards}, time.time() + 5.0,
                        retry=False)
        coord._inbox.pop(self.gid, None)

    def __enter__(self) -> "ShardedMonitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _raise_remote(value: Any) -> None:
    exc, tb = value
    raise exc from RemoteError(f"in worker:\n{tb}")


def _merge(names: list[str], form: str, shards: Shards, replies: dict[int, Any]) -> Snapshot:
    snap = Snapshot.empty(names, form=form)
    ctrl: dict[str, np.ndarray] = {}
    for i, idx in shards.items():
        kind, value = replies.get(i, ("died", "no reply"))
        if kind == "error":
            _raise_remote(value)
        if kind == "died":
            snap.error[idx] = value
            continue
        msg = transport.unpack(value)
        snap.value[idx] = msg["value"]
        snap.values[idx] = msg["values"]
        snap.status[idx] = msg["status"]
        snap.severity[idx] = msg["severity"]
        snap.timestamp[idx] = msg["timestamp"]
        snap.ok[idx] = msg["ok"]
        snap.error[idx] = _obj(msg["error"])
        for k, col in (msg["ctrl"] or {}).items():
            if k not in ctrl:
                ctrl[k] = np.full(len(names), None, dtype=object) if col.dtype == object else \
                    np.full(len(names), np.nan if col.dtype.kind == "f" else -1, dtype=col.dtype)
            ctrl[k][idx] = col
    snap.ctrl = ctrl
    return snap


def _merge_put(names: list[str], shards: Shards, replies: dict[int, Any]) -> Any:
    from ..bulk import PutResult

    ok = np.zeros(len(names), dtype=bool)
    error = np.full(len(names), None, dtype=object)
    for i, idx in shards.items():
        kind, value = replies.get(i, ("died", "no reply"))
        if kind == "error":
            _raise_remote(value)
        if kind == "died":
            error[idx] = value
            continue
        ok[idx], error[idx] = value[0], _obj(value[1])
    return PutResult(np.asarray(names, dtype=object), ok, error)


def _obj(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
