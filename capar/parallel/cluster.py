"""capar past one machine: the Coordinator's API on a Dask distributed cluster (extra ``capar[dask]``).

Who owns what:
- Each Dask worker process holds exactly one capar CA context, in a worker plugin (:class:`CaparWorker`,
  registered once per cluster under the name ``"capar"``) that owns one
  :class:`~capar.parallel.shard.ShardServer`: the Groups and Monitors of every DaskCoordinator using that
  worker, keyed by (coordinator id, group id, slot).  Channels persist between calls.
- :class:`DaskCoordinator` is a :class:`~capar.parallel.shard.ShardClient` whose transport is Dask: one task
  per shard message, pinned to its worker (``workers=[address]``, no stealing), results gathered until the
  call's deadline.  Messages carry time budgets, never wall-clock deadlines (host clocks differ).
- Why tasks and not actors: a task is the unit the scheduler already tracks, so a worker's death shows up
  as the task's (or the worker's) loss without another protocol, and requests to one worker run one at a
  time in its thread pool.  Monitor events come by long-poll: one outstanding ``MonitorDrain`` task per
  worker and monitor, which *secedes* from the worker's thread pool while it waits, so it never holds the
  thread a get or put needs (``threads_per_worker=1`` clusters included).
- A worker lost mid-call (killed, its nanny restarting it): its slot moves to a live worker (the restarted
  one with the same name when it is back in time, else the least loaded), its groups and monitors are
  re-created there and its shard is retried once with what is left of the budget, else every PV of it gets
  ``error="worker died (...)"``.  A worker that does not answer by the deadline: ``"worker timed out"``.
- The user's client and cluster are the user's: :meth:`DaskCoordinator.close` releases what this
  coordinator made in the workers and never closes the client.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from typing import Any, Mapping, Optional, Sequence

from .process import epics_environment
from .shard import Message, MonitorDrain, ShardClient, ShardServer, spend

__all__ = ["DaskCoordinator", "CaparWorker", "PLUGIN_NAME"]

log = logging.getLogger("capar")

PLUGIN_NAME = "capar"
_GRACE = 2.0       # seconds a worker may take beyond a call's deadline before it is declared hung
_LIVENESS = 0.25   # seconds between two looks at the scheduler's worker list while waiting
_DRAIN = 0.25      # seconds one monitor long-poll waits in the worker for events
_REJOIN = 10.0     # seconds to wait for a live worker to take over a lost worker's slot
_SAME_NAME = 3.0   # ... of which this long for the lost worker itself, restarted by its nanny


try:
    import distributed
except ImportError as exc:  # pragma: no cover - the extra is installed by make test
    raise ImportError("capar.DaskCoordinator needs Dask distributed: pip install 'capar[dask]'") from exc


# ---------------------------------------------------------------------------------------------------
# worker side

class CaparWorker(distributed.WorkerPlugin):
    """Worker plugin holding the worker process's one :class:`ShardServer` (one capar CA context).

    env : the EPICS_* variables of the worker's CA context, replacing the worker's own (None: keep those).
    """

    name = PLUGIN_NAME

    def __init__(self, env: Optional[Mapping[str, str]] = None) -> None:
        self.env = dict(env) if env else None
        self.server: Optional[ShardServer] = None

    def setup(self, worker: Any = None) -> None:
        from ..ca.context import registry

        reg = registry()
        if reg.forked_with_libca:
            raise RuntimeError(
                "capar: this Dask worker was forked from a process that had loaded libca; its CA context "
                "cannot be used.  Start workers with 'spawn' or 'forkserver' (Dask's default: "
                "distributed.worker.multiprocessing-method = spawn)")
        if self.env and reg.initial is None:  # the workers' CA environment is exactly this one
            for key in [k for k in os.environ if k.startswith("EPICS_") and k not in self.env]:
                del os.environ[key]
            os.environ.update(self.env)
        self.server = ShardServer(push=None, shm_threshold=None)

    def teardown(self, worker: Any = None) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def _server() -> ShardServer:
    worker = distributed.get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.server is None:
        raise RuntimeError(f"capar: the worker plugin {PLUGIN_NAME!r} is not set up on {worker.address}")
    return plugin.server


def _serve(msg: Message) -> tuple[str, Any]:
    """Task: run one shard message in this worker's ShardServer."""
    return _server().handle(msg)


def _serve_seceded(msg: Message) -> tuple[str, Any]:
    """Task: a long-poll (monitor drain) that leaves the worker's thread pool while it waits."""
    distributed.secede()
    return _server().handle(msg)


def _worker_pid() -> int:
    return os.getpid()


# ---------------------------------------------------------------------------------------------------
# client side

class DaskCoordinator(ShardClient):
    """The :class:`~capar.Coordinator` API on the workers of a Dask ``distributed.Client``.

    Parameters
    ----------
    client : distributed.Client — the user's (never closed here).
    shard_by : 'ioc' (default: whole IOCs per worker, balanced by PV count; servers learned from the
        workers), 'hash' (a stable hash of the name: rendezvous hashing over worker names, so a worker
        joining or leaving moves about 1/K of the PVs) or 'index' (contiguous slices).
    workers : addresses, names or hosts of the workers to use (default: every worker at creation).  Pins the
        shards to those workers: for IOCs only reachable from some subnets, give the workers that reach them.
    epics_env : EPICS_* variables for the workers' CA contexts (default: this process's; None: the workers'
        own environment).
    """

    def __init__(self, client: Any, shard_by: str = "ioc", workers: Optional[Sequence[str]] = None,
                 epics_env: Any = "inherit") -> None:
        if shard_by not in ("ioc", "hash", "index"):
            raise ValueError(f"shard_by must be 'ioc', 'hash' or 'index', not {shard_by!r}")
        self.client = client
        self.shard_by = shard_by
        self._uid = uuid.uuid4().hex[:12]
        self._init_client()
        self._closed = False
        self._drains: dict[tuple[int, int], Any] = {}  # (gid, slot) -> outstanding MonitorDrain future
        env = epics_environment() if epics_env == "inherit" else epics_env
        self._ensure_plugin(env)
        info = self._workers()
        self._slots = self._choose(info, workers)
        self._names = {addr: str(info[addr].get("name", addr)) for addr in self._slots}
        self.processes = len(self._slots)
        self._warn_if_threads()

    # -- workers -----------------------------------------------------------------------------------
    def _workers(self) -> dict[str, dict]:
        """The scheduler's current workers: {address: {"name", "host", ...}} (one round trip)."""
        def collect(dask_scheduler: Any) -> dict:
            return {a: {"name": ws.name, "host": ws.host} for a, ws in dask_scheduler.workers.items()}

        return self.client.run_on_scheduler(collect)

    def _ensure_plugin(self, env: Optional[Mapping[str, str]]) -> None:
        """Register the worker plugin once per cluster (registering again would replace every worker's
        ShardServer, and with it the channels of other coordinators)."""
        have = self.client.run(lambda dask_worker: PLUGIN_NAME in dask_worker.plugins)
        if have and all(have.values()):
            return
        result = self.client.register_plugin(CaparWorker(env), name=PLUGIN_NAME)
        failed = {w: r for w, r in (result or {}).items() if isinstance(r, dict) and r.get("status") == "error"}
        if failed:
            w, r = next(iter(failed.items()))
            raise RuntimeError(f"capar: the worker plugin failed on {w}: {r.get('exception_text') or r}")

    @staticmethod
    def _choose(info: dict[str, dict], workers: Optional[Sequence[str]]) -> list[str]:
        if not info:
            raise RuntimeError("capar: the Dask cluster has no workers")
        if workers is None:
            chosen = list(info)
        else:
            wanted = {str(w) for w in workers}
            chosen = [a for a, i in info.items() if a in wanted or str(i["name"]) in wanted or i["host"] in wanted]
            if not chosen:
                raise ValueError(f"none of the workers {sorted(wanted)} is in the cluster ({sorted(info)})")
        return sorted(chosen, key=lambda a: (str(info[a]["name"]), a))

    def _warn_if_threads(self) -> None:
        pids = self.client.run(_worker_pid, workers=self._slots)
        if os.getpid() in pids.values():
            warnings.warn("capar: Dask workers run as threads of this process (processes=False): they share "
                          "this process's one CA context; use processes=True for one context per worker",
                          RuntimeWarning, stacklevel=3)

    def _slot_keys(self) -> list[str]:
        return [self._names.get(a, a) for a in self._slots]

    @property
    def workers(self) -> list[str]:
        """Addresses of the workers serving the slots now."""
        return list(self._slots)

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("DaskCoordinator is closed")

    @property
    def _usable(self) -> bool:
        return not self._closed

    # -- transport ---------------------------------------------------------------------------------
    def _scoped(self, i: int, msg: Message) -> Message:
        """*msg* with its group id made unique in the worker: (this coordinator, gid, slot)."""
        gid = getattr(msg, "gid", None)
        if gid is None:
            return msg
        import dataclasses

        return dataclasses.replace(msg, gid=(self._uid, gid, i))  # type: ignore[arg-type]

    def _submit(self, i: int, msg: Message, seceded: bool = False) -> Any:
        return self.client.submit(_serve_seceded if seceded else _serve, self._scoped(i, msg),
                                  workers=[self._slots[i]], allow_other_workers=False, pure=False)

    def _call(self, msgs: dict[int, Message], deadline: float, retry: bool = True) -> dict[int, Any]:
        """Submit one task per slot and gather replies until *deadline* (``time.monotonic()`` s) + grace;
        a lost worker's slot moves and is retried once (see module docstring)."""
        wait = distributed.wait
        start = time.monotonic()
        pending = {i: self._submit(i, m) for i, m in msgs.items()}
        retried: set[int] = set()
        out: dict[int, Any] = {}
        while pending:
            remaining = deadline + _GRACE - time.monotonic()
            if remaining <= 0:
                for i, fut in pending.items():
                    fut.cancel()
                    log.warning("capar: Dask worker %s did not answer in time", self._slots[i])
                    out[i] = ("died", "worker timed out")
                    self._move(i, exclude=self._slots[i])
                break
            try:
                wait(list(pending.values()), timeout=min(remaining, _LIVENESS), return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
            lost = self._lost(pending)
            for i in list(pending):
                fut = pending[i]
                reply = self._reply(fut) if fut.done() else (("died", lost[i]) if i in lost else None)
                if reply is None:
                    continue
                del pending[i]
                if reply[0] != "died":
                    out[i] = reply
                    continue
                fut.cancel()
                log.warning("capar: Dask worker %s lost while serving a request (%s)", self._slots[i], reply[1])
                self._move(i)
                if retry and i not in retried and time.monotonic() < deadline + _GRACE:
                    retried.add(i)
                    pending[i] = self._submit(i, spend(msgs[i], time.monotonic() - start))
                else:
                    out[i] = reply
        return out

    def _reply(self, fut: Any) -> tuple[str, Any]:
        try:
            return fut.result()
        except Exception as exc:  # KilledWorker, CancelledError, a lost worker's error
            return "died", f"worker died ({type(exc).__name__}: {exc})"

    def _lost(self, pending: dict[int, Any]) -> dict[int, str]:
        """Slots among *pending* whose worker left the cluster: {slot: reason}."""
        alive = self._workers()
        return {i: f"worker died ({self._slots[i]} left the cluster)" for i in pending
                if self._slots[i] not in alive}

    def _move(self, i: int, exclude: Optional[str] = None) -> None:
        """Give slot *i* to a live worker (the same name, restarted, if it is back within ``_REJOIN``
        seconds; else the least-loaded) and re-create its groups and monitors there."""
        old = self._slots[i]
        name = self._names.get(old)
        start = time.monotonic()
        while True:
            info = {a: v for a, v in self._workers().items() if a not in (old, exclude)}
            same = [a for a, v in info.items() if str(v["name"]) == name]
            waited = time.monotonic() - start
            if same or (info and (waited >= _SAME_NAME or exclude)):  # a hung worker is not coming back
                break
            if waited >= _REJOIN:
                raise RuntimeError("capar: no live Dask worker to take over a lost worker's shard")
            time.sleep(0.1)
        if same:
            new = same[0]
        else:
            load = {a: sum(s == a for s in self._slots) for a in info}
            new = min(info, key=lambda a: (load[a], a))
        self._slots[i] = new
        self._names[new] = str(info[new]["name"])
        for key in [k for k in self._drains if k[1] == i]:
            self._drains.pop(key).cancel()
        self._restore(i)

    def _pump(self, timeout: float) -> None:
        """Long-poll every monitor shard for events (one outstanding drain each) for up to *timeout* s."""
        for gid, per_slot in list(self._monitors.items()):
            for i in per_slot:
                if (gid, i) not in self._drains:
                    self._drains[(gid, i)] = self._submit(i, MonitorDrain(gid, _DRAIN), seceded=True)
        if not self._drains:
            time.sleep(max(timeout, 0.0))
            return
        try:
            distributed.wait(list(self._drains.values()), timeout=max(timeout, 1e-3), return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        lost = self._lost({i: None for _, i in self._drains})
        for (gid, i), fut in list(self._drains.items()):
            if not fut.done() and i not in lost:
                continue
            del self._drains[(gid, i)]
            kind, value = self._reply(fut) if fut.done() else ("died", lost[i])
            if kind == "ok":
                if value is not None and len(value):
                    self._inbox.setdefault(gid, []).append((i, value))
            elif gid in self._monitors:
                log.warning("capar: monitor shard on Dask worker %s lost (%s); re-creating it", self._slots[i],
                            value if kind == "died" else value[0])
                self._move(i)
                return

    def _forget_monitor(self, gid: int) -> None:
        for key in [k for k in self._drains if k[0] == gid]:
            self._drains.pop(key).cancel()
        self._inbox.pop(gid, None)

    # -- shutdown --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release every group and monitor this coordinator made in the workers; the client stays open."""
        if self._closed:
            return
        from .shard import GroupClose, MonitorStop

        for fut in self._drains.values():
            fut.cancel()
        self._drains.clear()
        msgs: dict[int, list[Message]] = {}
        for gid, per_slot in self._monitors.items():
            for i in per_slot:
                msgs.setdefault(i, []).append(MonitorStop(gid))
        for gid, per_slot in self._groups.items():
            for i in per_slot:
                msgs.setdefault(i, []).append(GroupClose(gid))
        self._monitors.clear()
        self._groups.clear()
        while any(msgs.values()):
            batch = {i: m.pop() for i, m in msgs.items() if m}
            try:
                self._call(batch, time.monotonic() + 5.0, retry=False)
            except Exception:  # pragma: no cover - a closing cluster
                break
        self._closed = True

    def __enter__(self) -> "DaskCoordinator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DaskCoordinator {self.processes} workers, shard_by={self.shard_by!r}{', closed' if self._closed else ''}>"
