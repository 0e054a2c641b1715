"""The shard protocol: typed messages, the worker-side :class:`ShardServer`, the transport-free client side.

A *shard* is the part of a PV list one worker serves.  Everything a worker can be asked is one message
class below (a frozen dataclass, picklable, with time budgets in seconds, never wall-clock deadlines:
clocks of two hosts differ).  :class:`ShardServer` runs them in the worker's one CA context on the bulk
path (Groups, Monitors) and owns what they create.  :class:`ShardClient` holds the caller's side --
sharding, per-shard messages, merging replies in input order, failures as per-PV errors -- and leaves
the carrying of messages to a subclass: :class:`~capar.parallel.coordinator.Coordinator` over pipes to
local processes; another engine (a Dask cluster) carries the same messages.

Replies: ``("ok", value)`` | ``("error", (exception, traceback text))`` | ``("died", reason)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Optional, Sequence

import numpy as np

from ..ca.errors import seconds
from ..snapshot import Snapshot
from . import transport

__all__ = [
    "Message", "Get", "Locate", "Put", "Connect", "GroupGet", "GroupPut", "GroupClose", "MonitorStart",
    "MonitorDrain", "MonitorStop", "ShardServer", "ShardClient", "ShardedGroup", "ShardedMonitor", "RemoteError",
    "Shards", "shard_by_index", "shard_by_ioc", "shard_by_hash", "spend",
]

Shards = dict  # {worker slot: positions (int64 array, ascending) of the PVs it serves}; no empty shard


# ---------------------------------------------------------------------------------------------------
# messages

@dataclass(frozen=True)
class Message:
    """One request to a :class:`ShardServer`; ``run(server)`` returns the reply value."""

    #: fields holding a time budget in seconds (reduced by :func:`spend` when a message is re-sent)
    BUDGETS: ClassVar[tuple[str, ...]] = ()
    #: the ShardServer method that runs this message
    OP: ClassVar[str] = ""

    def run(self, server: "ShardServer") -> Any:
        return getattr(server, self.OP)(self)


def spend(msg: Message, elapsed: float) -> Message:
    """*msg* with *elapsed* seconds taken from each of its budgets (never below 0)."""
    if not msg.BUDGETS or elapsed <= 0:
        return msg
    return dataclasses.replace(msg, **{f: max(getattr(msg, f) - elapsed, 0.0) for f in msg.BUDGETS})


@dataclass(frozen=True)
class Get(Message):
    """One-shot read of *names* (connect within *connection_timeout*, then read within *timeout*, s)."""

    names: list
    form: str
    timeout: float
    connection_timeout: float
    count: Optional[int] = None
    as_string: bool = False
    want_hosts: bool = False
    BUDGETS: ClassVar[tuple[str, ...]] = ("timeout", "connection_timeout")
    OP: ClassVar[str] = "get"


@dataclass(frozen=True)
class Locate(Message):
    """The server (``host:port``) of each of *names*, "" where not connected within *connection_timeout* s."""

    names: list
    connection_timeout: float
    BUDGETS: ClassVar[tuple[str, ...]] = ("connection_timeout",)
    OP: ClassVar[str] = "locate"


@dataclass(frozen=True)
class Put(Message):
    """One-shot write of *values* to *names*; reply (ok list, error list)."""

    names: list
    values: list
    wait: bool
    timeout: float
    connection_timeout: float
    BUDGETS: ClassVar[tuple[str, ...]] = ("timeout", "connection_timeout")
    OP: ClassVar[str] = "put"


@dataclass(frozen=True)
class Connect(Message):
    """Create (or re-create) the server's group *gid*; reply: number connected."""

    gid: int
    names: list
    form: str
    connection_timeout: float
    count: Optional[int] = None
    as_string: bool = False
    BUDGETS: ClassVar[tuple[str, ...]] = ("connection_timeout",)
    OP: ClassVar[str] = "connect"


@dataclass(frozen=True)
class GroupGet(Message):
    """Read group *gid* within *timeout* s."""

    gid: int
    timeout: float
    BUDGETS: ClassVar[tuple[str, ...]] = ("timeout",)
    OP: ClassVar[str] = "group_get"


@dataclass(frozen=True)
class GroupPut(Message):
    """Write *values* to group *gid*; reply (ok list, error list)."""

    gid: int
    values: list
    wait: bool
    timeout: float
    BUDGETS: ClassVar[tuple[str, ...]] = ("timeout",)
    OP: ClassVar[str] = "group_put"


@dataclass(frozen=True)
class GroupClose(Message):
    """Release group *gid*'s channels."""

    gid: int
    OP: ClassVar[str] = "group_close"


@dataclass(frozen=True)
class MonitorStart(Message):
    """Monitor *names* as monitor *gid*; batches are pushed (when the server has a push) or drained."""

    gid: int
    names: list
    form: str
    count: Optional[int]
    queue_size: int
    latency: float
    connection_timeout: float
    BUDGETS: ClassVar[tuple[str, ...]] = ("connection_timeout",)
    OP: ClassVar[str] = "monitor_start"


@dataclass(frozen=True)
class MonitorDrain(Message):
    """The events of monitor *gid* (a Batch, or None after *timeout* s without any)."""

    gid: int
    timeout: float
    OP: ClassVar[str] = "monitor_drain"


@dataclass(frozen=True)
class MonitorStop(Message):
    """Stop monitor *gid*."""

    gid: int
    OP: ClassVar[str] = "monitor_stop"


# ---------------------------------------------------------------------------------------------------
# worker side

class ShardServer:
    """Runs messages in this process's CA context; owns the Groups and Monitors they create.

    push : ``push(gid, batch)`` ships a monitor batch to the client as soon as it is built (a transport
        that can send unasked, like a pipe); None: batches wait for :class:`MonitorDrain`.
    shm_threshold : bytes, or None -- arrays this large are returned through shared memory.
    """

    def __init__(self, push: Optional[Callable[[int, Any], None]] = None,
                 shm_threshold: Optional[int] = transport.DEFAULT_SHM_THRESHOLD) -> None:
        self.push = push
        self.shm_threshold = shm_threshold
        self.groups: dict[int, Any] = {}
        self.monitors: dict[int, tuple[Any, Optional[threading.Thread]]] = {}

    def handle(self, msg: Message) -> tuple[str, Any]:
        """Run *msg*: ``("ok", value)`` or ``("error", (exception, traceback text))``; never raises."""
        try:
            if not isinstance(msg, Message):
                raise TypeError(f"not a shard message: {type(msg).__name__}")
            return "ok", msg.run(self)
        except BaseException as exc:  # the exception travels back with its traceback text
            import traceback

            return "error", (exc, traceback.format_exc())

    def _pack(self, snap: Snapshot) -> dict:
        return transport.pack(snap, self.shm_threshold)

    # -- one-shot ------------------------------------------------------------------------------------
    def get(self, m: Get) -> dict:
        from ..bulk import Group

        with Group(m.names, form=m.form, count=m.count, as_string=m.as_string,
                   connection_timeout=m.connection_timeout) as g:
            snap = g.get(timeout=m.timeout)
            snap.elapsed += g.connect_seconds
            hosts = g.hosts() if m.want_hosts else None
        reply = self._pack(snap)
        reply["hosts"] = hosts
        return reply

    def locate(self, m: Locate) -> list:
        from ..bulk import Group

        with Group(m.names, connection_timeout=m.connection_timeout) as g:
            return g.hosts()

    def put(self, m: Put) -> tuple:
        from ..bulk import Group

        t0 = time.monotonic()
        with Group(m.names, connection_timeout=m.connection_timeout) as g:
            res = g.put(m.values, wait=m.wait, timeout=max(m.timeout - (time.monotonic() - t0), 0.0)
                        if m.timeout else 0.0)
        return res.ok, res.error.tolist()

    # -- groups ---------------------------------------------------------------------------------------
    def connect(self, m: Connect) -> int:
        from ..bulk import Group

        old = self.groups.pop(m.gid, None)
        if old is not None:
            old.close()
        g = Group(m.names, form=m.form, count=m.count, as_string=m.as_string,
                  connection_timeout=m.connection_timeout)
        self.groups[m.gid] = g
        return int(g.connected.sum())

    def group_get(self, m: GroupGet) -> dict:
        return self._pack(self.groups[m.gid].get(timeout=m.timeout))

    def group_put(self, m: GroupPut) -> tuple:
        res = self.groups[m.gid].put(m.values, wait=m.wait, timeout=m.timeout)
        return res.ok, res.error.tolist()

    def group_close(self, m: GroupClose) -> None:
        g = self.groups.pop(m.gid, None)
        if g is not None:
            g.close()

    # -- monitors -------------------------------------------------------------------------------------
    def monitor_start(self, m: MonitorStart) -> int:
        from ..monitor import Monitor

        self.monitor_stop(MonitorStop(m.gid))
        mon = Monitor(m.names, form=m.form, count=m.count, queue_size=m.queue_size, latency=m.latency,
                      connection_timeout=m.connection_timeout)
        th = None
        if self.push is not None:
            th = threading.Thread(target=self._stream, args=(m.gid, mon), daemon=True, name=f"capar-stream-{m.gid}")
            th.start()
        self.monitors[m.gid] = (mon, th)
        return int(mon.connected.sum())

    def _stream(self, gid: int, mon: Any) -> None:
        """Ship every batch of monitor *gid* through ``push`` as soon as it is built."""
        while not mon.closed:
            batch = mon.get_batch(timeout=0.2)
            if batch is not None and len(batch):
                try:
                    self.push(gid, batch)  # type: ignore[misc]
                except (OSError, ValueError):
                    return

    def monitor_drain(self, m: MonitorDrain) -> Any:
        mon, _ = self.monitors[m.gid]
        return mon.get_batch(timeout=m.timeout)

    def monitor_stop(self, m: MonitorStop) -> None:
        mon, th = self.monitors.pop(m.gid, (None, None))
        if mon is not None:
            mon.close()
            if th is not None:
                th.join(2.0)

    def close(self) -> None:
        """Stop every monitor and release every group (idempotent)."""
        for gid in list(self.monitors):
            self.monitor_stop(MonitorStop(gid))
        for gid in list(self.groups):
            self.group_close(GroupClose(gid))


# ---------------------------------------------------------------------------------------------------
# sharding

def shard_by_index(n: int, k: int) -> Shards:
    """Balanced contiguous slices of range(n) over at most k workers ("index" sharding)."""
    k = max(1, min(k, n))
    bounds = np.linspace(0, n, k + 1).astype(int)
    return {i: np.arange(a, b) for i, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
            if b > a}


def shard_by_ioc(names: list[str], hosts: dict[str, str], k: int) -> Shards:
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


def _stable_hash(texts: Sequence[str]) -> np.ndarray:
    """64-bit hashes of *texts* that every process and host agrees on (unlike ``hash()``, which
    PYTHONHASHSEED salts per process): blake2b of the UTF-8 text."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
                        for t in texts), dtype=np.uint64, count=len(texts))


def shard_by_hash(names: Sequence[str], slots: Sequence[str]) -> Shards:
    """Each name to the slot with the highest hash of (slot key, name): rendezvous hashing, stable across
    processes and hosts; when a slot key is added or removed only the names it wins or held move (about
    1/K of them).  *slots*: one stable key per worker slot (e.g. its worker's name)."""
    h = _stable_hash(names)
    best = np.zeros(len(names), dtype=np.uint64)
    owner = np.zeros(len(names), dtype=np.int64)
    with np.errstate(over="ignore"):
        for i, key in enumerate(slots):
            x = h ^ _stable_hash([str(key)])[0]
            # splitmix64 finaliser: every bit of (slot, name) decides the weight
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
            win = x > best if i else np.ones(len(names), dtype=bool)
            best[win] = x[win]
            owner[win] = i
    return {i: np.flatnonzero(owner == i) for i in range(len(slots)) if (owner == i).any()}


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


class RemoteError(Exception):
    """An exception raised in a worker; the remote traceback is in the message."""


# ---------------------------------------------------------------------------------------------------
# client side

class ShardClient:
    """The caller's side of the shard protocol, independent of how messages travel.

    A subclass provides ``processes`` (number of workers), ``shard_by`` ('index' | 'ioc') and three
    methods: ``_call({slot: Message}, deadline) -> {slot: reply}`` (wait for every reply until *deadline*,
    ``time.monotonic()`` seconds; a worker lost meanwhile is replaced and its shard retried once with what
    is left of the budget (:func:`spend`), else the reply is ``("died", reason)``), ``_pump(timeout)``
    (collect pushed monitor batches into ``_inbox``) and ``_check()`` (raise when unusable).  It also keeps
    ``_groups`` / ``_monitors`` (gid -> {slot: message}) so that a replaced worker gets its groups and
    monitors back.
    """

    processes: int
    shard_by: str
    #: longest wait (seconds) of shard_by='ioc' for the servers of PVs it has not seen connected yet
    locate_seconds = 1.0

    def _init_client(self) -> None:
        self._hosts: dict[str, str] = {}  # PV name -> "host:port" of its server, learned from the workers
        self._next_gid = 0
        self._groups: dict[int, dict[int, Message]] = {}    # gid -> {slot: Connect}
        self._monitors: dict[int, dict[int, Message]] = {}  # gid -> {slot: MonitorStart}
        self._inbox: dict[int, list] = {}  # gid -> [(slot, Batch)] received while waiting for replies

    # -- transport (subclass) --------------------------------------------------------------------------
    def _call(self, msgs: dict[int, Message], deadline: float, retry: bool = True) -> dict[int, Any]:
        raise NotImplementedError

    def _pump(self, timeout: float) -> None:
        raise NotImplementedError

    def _check(self) -> None:
        raise NotImplementedError

    @property
    def _usable(self) -> bool:
        """False once closed or broken (closing groups/monitors then sends nothing)."""
        raise NotImplementedError

    def _forget_monitor(self, gid: int) -> None:
        """Drop what the transport still holds for monitor *gid* (its undelivered batches)."""
        self._inbox.pop(gid, None)

    def _restore(self, slot: int) -> None:
        """Re-create the groups and monitors of a replaced worker *slot*."""
        for per_slot in list(self._groups.values()) + list(self._monitors.values()):
            msg = per_slot.get(slot)
            if msg is not None:
                budget = float(getattr(msg, "connection_timeout", 5.0))
                self._call({slot: msg}, time.monotonic() + budget, retry=False)

    def _gid(self) -> int:
        self._next_gid += 1
        return self._next_gid

    # -- sharding ------------------------------------------------------------------------------------
    def _plan(self, names: list[str]) -> Shards:
        if self.shard_by == "ioc":
            return shard_by_ioc(names, self._hosts, self.processes)
        if self.shard_by == "hash":
            return shard_by_hash(names, self._slot_keys())
        return shard_by_index(len(names), self.processes)

    def _slot_keys(self) -> list[str]:
        """A stable key per worker slot, for 'hash' sharding (the slot number unless a transport knows better)."""
        return [str(i) for i in range(self.processes)]

    def _learn(self, names: list[str], hosts: Sequence[Optional[str]]) -> None:
        """Remember the server of each connected PV; forget it for PVs that did not connect."""
        for name, host in zip(names, hosts):
            if host:
                self._hosts[name] = host
            else:
                self._hosts.pop(name, None)

    def _locate(self, names: list[str], connection_timeout: float) -> None:
        """'ioc' sharding: find the servers of PVs not located yet (connect, ask, clear; in the workers).

        Waits at most ``locate_seconds`` (or *connection_timeout*, if shorter): a name no server answers
        would otherwise hold every start for its whole connection timeout twice.  PVs not found by then
        are placed as unknown.
        """
        if self.shard_by != "ioc":
            return
        unknown = list(dict.fromkeys(n for n in names if n not in self._hosts))
        if not unknown:
            return
        budget = min(connection_timeout, self.locate_seconds)
        shards = shard_by_index(len(unknown), self.processes)
        replies = self._call({i: Locate(_take(unknown, idx), budget) for i, idx in shards.items()},
                             time.monotonic() + budget)
        for i, idx in shards.items():
            kind, value = replies.get(i, ("died", None))
            if kind == "ok":
                self._learn(_take(unknown, idx), value)

    # -- API -------------------------------------------------------------------------------------------
    def get(self, names: Sequence[str], form: str = "time", timeout: float = 2.0,
            connection_timeout: float = 5.0, count: Optional[int] = None, as_string: bool = False) -> Snapshot:
        """Sharded one-shot read: connect within *connection_timeout*, then read within *timeout* (s)."""
        self._check()
        names = _check_names(names)
        t0 = time.perf_counter()
        ctimeout = seconds(connection_timeout, "connection_timeout")
        rtimeout = seconds(timeout)
        deadline = time.monotonic() + ctimeout + rtimeout
        shards = self._plan(names)
        learn = self.shard_by == "ioc"
        replies = self._call({i: Get(_take(names, idx), form, rtimeout, ctimeout, count, as_string, learn)
                              for i, idx in shards.items()}, deadline)
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
        """Sharded bulk put (connect within *connection_timeout*, then *timeout* s); a PutResult in input order."""
        self._check()
        names = _check_names(names)
        if len(values) != len(names):
            raise ValueError(f"{len(values)} values for {len(names)} PVs")
        ctimeout = seconds(connection_timeout, "connection_timeout")
        rtimeout = seconds(timeout)
        shards = self._plan(names)
        msgs = {i: Put(_take(names, idx), _take(values, idx), wait, rtimeout, ctimeout) for i, idx in shards.items()}
        return _merge_put(names, shards, self._call(msgs, time.monotonic() + ctimeout + rtimeout))

    def connect(self, names: Sequence[str], form: str = "time", connection_timeout: float = 5.0,
                count: Optional[int] = None, as_string: bool = False) -> "ShardedGroup":
        """Connect *names* in the workers (kept there, *connection_timeout* s) and return a ShardedGroup."""
        self._check()
        names = _check_names(names)
        gid = self._gid()
        ctimeout = seconds(connection_timeout, "connection_timeout")
        self._locate(names, ctimeout)
        shards = self._plan(names)
        msgs = {i: Connect(gid, _take(names, idx), form, ctimeout, count, as_string) for i, idx in shards.items()}
        self._groups[gid] = dict(msgs)
        self._call(msgs, time.monotonic() + ctimeout)
        return ShardedGroup(self, gid, names, form, shards)

    def monitor(self, names: Sequence[str], form: str = "time", batch_interval: float = 0.1,
                queue_size: int = 100_000, count: Optional[int] = None,
                connection_timeout: float = 5.0) -> "ShardedMonitor":
        """Monitor *names* in the workers; iterate the result for merged batches (indices in input order).

        batch_interval : float, seconds — each worker ships its events at most this long after they arrive.
        queue_size : int — per-worker ring capacity in events (overflow is counted, see Batch.overflow).
        connection_timeout : float, seconds.
        """
        self._check()
        names = _check_names(names)
        gid = self._gid()
        ctimeout = seconds(connection_timeout, "connection_timeout")
        self._locate(names, ctimeout)
        shards = self._plan(names)
        msgs = {i: MonitorStart(gid, _take(names, idx), form, count, queue_size, batch_interval, ctimeout)
                for i, idx in shards.items()}
        self._monitors[gid] = dict(msgs)
        replies = self._call(msgs, time.monotonic() + ctimeout)
        for kind, value in replies.values():
            if kind == "error":
                self._monitors.pop(gid, None)
                _raise_remote(value)
        return ShardedMonitor(self, gid, names, shards)


class ShardedGroup:
    """Channels connected in the workers; ``get()`` / ``put()`` repeat on them."""

    def __init__(self, client: ShardClient, gid: int, names: list[str], form: str, shards: Shards) -> None:
        self._coord, self.gid, self.names, self.form, self._shards = client, gid, names, form, shards
        self.closed = False

    def get(self, timeout: float = 2.0) -> Snapshot:
        """Read every PV; one deadline (*timeout* seconds) for all shards."""
        self._coord._check()
        t0 = time.perf_counter()
        budget = seconds(timeout)
        msgs = {i: GroupGet(self.gid, budget) for i in self._shards}
        snap = _merge(self.names, self.form, self._shards, self._coord._call(msgs, time.monotonic() + budget))
        snap.elapsed = time.perf_counter() - t0
        return snap

    def put(self, values: Sequence[Any], wait: bool = False, timeout: float = 60.0) -> Any:
        """Write one value per PV (input order) within *timeout* s; PutResult with per-PV ok/error."""
        self._coord._check()
        if len(values) != len(self.names):
            raise ValueError(f"{len(values)} values for {len(self.names)} PVs")
        budget = seconds(timeout)
        msgs = {i: GroupPut(self.gid, _take(values, idx), wait, budget) for i, idx in self._shards.items()}
        return _merge_put(self.names, self._shards, self._coord._call(msgs, time.monotonic() + budget))

    def close(self) -> None:
        """Release the channels in the workers (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._coord._groups.pop(self.gid, None)
        if self._coord._usable:
            self._coord._call({i: GroupClose(self.gid) for i in self._shards}, time.monotonic() + 5.0, retry=False)

    def __enter__(self) -> "ShardedGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ShardedMonitor:
    """Batches from every worker's Monitor, merged, with PV indices in the caller's order.

    Iterate (``for batch in mon``) or call :meth:`get_batch`; stop with :meth:`close` or ``with``.
    """

    def __init__(self, client: ShardClient, gid: int, names: list[str], shards: Shards,
                 timeout: float = 1.0) -> None:
        self._coord, self.gid, self.names, self._shards = client, gid, names, shards
        self.timeout = timeout
        self.closed = False
        self.overflow = 0

    def get_batch(self, timeout: float = 1.0) -> Optional[Any]:
        """Events that arrived within *timeout* seconds, merged into one Batch (None when there are none)."""
        coord = self._coord
        coord._check()
        deadline = time.monotonic() + seconds(timeout)
        while not coord._inbox.get(self.gid):
            remaining = deadline - time.monotonic()
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
        if coord._usable:
            coord._call({i: MonitorStop(self.gid) for i in self._shards}, time.monotonic() + 5.0, retry=False)
        coord._forget_monitor(self.gid)

    def __enter__(self) -> "ShardedMonitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _raise_remote(value: Any) -> None:
    exc, tb = value
    raise exc from RemoteError(f"in worker:\n{tb}")


def _merge(names: list[str], form: str, shards: Shards, replies: dict[int, Any]) -> Snapshot:
    """One Snapshot in input order from per-shard replies (a lost shard: its PVs carry the reason)."""
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
