"""Coordinator(shard_by="ioc"|"index") against several IOCs, proven by each IOC's own count of circuits.

Under "ioc" every PV of one IOC is served by one worker, so each IOC serves exactly one capar circuit
(``casr``: the client end of every circuit is matched with the worker pids); under "index" with a mixed PV
list every worker talks to every IOC.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Iterator

import numpy as np
import pytest

from capar import Coordinator
from capar.parallel.coordinator import _ioc_shards
from capar.testing import IOCSet, db_counters, db_scalars, unique_prefix

SIZES = (400, 300, 250, 150, 100, 60)  # PVs per IOC: deliberately uneven
K = 3


@pytest.fixture(scope="module")
def iocs() -> Iterator[IOCSet]:
    base = unique_prefix("SB")
    prefixes = [f"{base}{k}:" for k in range(len(SIZES))]
    dbs = [db_scalars(p, n) + db_counters(p, 2) for p, n in zip(prefixes, SIZES)]
    with IOCSet(dbs, prefixes=prefixes, name="shardby") as s:
        yield s


@pytest.fixture
def mixed(iocs: IOCSet) -> list[str]:
    """Every scalar of every IOC, shuffled, plus 30 names no IOC serves."""
    names = [f"{ioc.prefix}s{i}" for ioc, n in zip(iocs, SIZES) for i in range(n)]
    names += [f"{unique_prefix('NOPE')}x{i}" for i in range(30)]
    random.Random(7).shuffle(names)
    return names


@pytest.fixture
def coordinator(iocs: IOCSet, monkeypatch: pytest.MonkeyPatch) -> Iterator[Coordinator]:
    def make(shard_by: str) -> Coordinator:
        for key, value in iocs.env.items():  # the workers take the parent's EPICS_* at creation
            monkeypatch.setenv(key, value)
        co = Coordinator(K, shard_by=shard_by)
        made.append(co)
        return co

    made: list[Coordinator] = []
    yield make  # type: ignore[misc]
    for co in made:
        co.close()


def _circuit_owners(iocs: IOCSet, pids: list[int]) -> list[list[int]]:
    """For each IOC: the worker pids at the client end of its circuits (casr), waiting for old ones to close."""
    owners = []
    for ioc in iocs:
        got = ioc.client_pids()
        owners.append(sorted(p for p in got if p in pids))
        assert len(got) == len(owners[-1]), f"{ioc.name}: circuits of other processes {got} (workers {pids})"
    return owners


def _ioc_of(iocs: IOCSet, name: str) -> int:
    return next(k for k, ioc in enumerate(iocs) if name.startswith(ioc.prefix))


def _expected(iocs: IOCSet, names: list[str]) -> np.ndarray:
    out = []
    for name in names:
        served = any(name.startswith(ioc.prefix) for ioc in iocs)
        out.append(float(name.rsplit(":s", 1)[1]) if served else np.nan)  # db_scalars: s{i} holds float(i)
    return np.asarray(out)


def test_ioc_sharding_one_worker_per_ioc_balanced(iocs: IOCSet, mixed: list[str], coordinator) -> None:
    co = coordinator("ioc")
    dead = {n for n in mixed if n.startswith("NOPE")}
    with co.connect(mixed, connection_timeout=3) as g:
        snap = g.get(timeout=5)
        expect = _expected(iocs, mixed)
        live = ~np.isnan(expect)
        assert snap.ok[live].all() and np.array_equal(snap.value[live], expect[live])
        assert not snap.ok[~live].any() and set(snap.error[~live]) == {"not connected"}

        # each IOC's own count: exactly one circuit, from a worker of this Coordinator
        owners = _circuit_owners(iocs, co.pids)
        assert all(len(o) == 1 for o in owners), owners
        # IOCs balanced over the workers by PV count (largest first onto the least loaded)
        load = Counter()
        for k, o in enumerate(owners):
            load[o[0]] += SIZES[k]
        assert len(load) == K and max(load.values()) - min(load.values()) <= max(SIZES)
        # the same placement seen from the Coordinator: whole IOCs per shard, dead names split evenly
        n_dead = [sum(mixed[j] in dead for j in idx.tolist()) for idx in g._shards.values()]
        assert max(n_dead) - min(n_dead) <= 1 and sum(n_dead) == len(dead)
        per_ioc = Counter()
        for idx in g._shards.values():
            for k in {_ioc_of(iocs, mixed[j]) for j in idx.tolist() if mixed[j] not in dead}:
                per_ioc[k] += 1
        assert per_ioc == Counter({k: 1 for k in range(len(SIZES))})

        # one-shot gets and puts follow the same placement, in input order
        again = co.get(mixed, timeout=5, connection_timeout=3)
        assert np.array_equal(again.ok, snap.ok) and np.array_equal(again.value[live], expect[live])


def test_index_sharding_reaches_every_ioc_from_every_worker(iocs: IOCSet, mixed: list[str], coordinator) -> None:
    co = coordinator("index")
    with co.connect(mixed, connection_timeout=3) as g:
        assert g.get(timeout=5).ok.sum() == sum(SIZES)
        owners = _circuit_owners(iocs, co.pids)
        assert all(o == sorted(co.pids) for o in owners), owners  # K circuits per IOC
        starts = [int(idx[0]) for idx in g._shards.values()]
        assert all(np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)) for idx in g._shards.values())
        assert starts == sorted(starts)


def test_ioc_sharded_monitor_and_put(iocs: IOCSet, coordinator) -> None:
    co = coordinator("ioc")
    counters = [f"{ioc.prefix}c{i}" for ioc in iocs for i in range(2)]
    random.Random(3).shuffle(counters)
    with co.monitor(counters, batch_interval=0.05) as mon:  # servers unknown: located first
        seen: set[int] = set()
        for _ in range(100):
            batch = mon.get_batch(timeout=1.0)
            if batch is not None:
                seen.update(batch.index.tolist())
            if len(seen) == len(counters):
                break
        assert seen == set(range(len(counters)))
        owners = _circuit_owners(iocs, co.pids)
        assert all(len(o) == 1 for o in owners), owners
    scratch = [f"{iocs[k].prefix}s{SIZES[k] - 1}" for k in range(len(SIZES))][::-1]
    res = co.put(scratch, [1000.0 + k for k in range(len(scratch))], wait=True, timeout=5)
    assert res.ok.all(), res.failed
    snap = co.get(scratch)
    assert snap.value.tolist() == [1000.0 + k for k in range(len(scratch))]
    co.put(scratch, [float(SIZES[k] - 1) for k in reversed(range(len(SIZES)))], wait=True)


def test_unknown_shard_by_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="shard_by"):
        Coordinator(1, shard_by="name")


def test_ioc_shard_plan() -> None:
    names = [f"P{k}:{i}" for k, n in enumerate((50, 30, 30, 20, 5)) for i in range(n)] + [f"X{i}" for i in range(7)]
    random.Random(1).shuffle(names)
    hosts = {n: f"h:{n.split(':')[0]}" for n in names if not n.startswith("X")}
    plan = _ioc_shards(names, hosts, 3)
    assert sorted(np.concatenate(list(plan.values())).tolist()) == list(range(len(names)))
    assert all(np.all(np.diff(idx) > 0) for idx in plan.values())  # input order within a shard
    servers = [{hosts[names[j]] for j in idx.tolist() if names[j] in hosts} for idx in plan.values()]
    assert sum(len(s) for s in servers) == 5 and set().union(*servers) == set(hosts.values())
    loads = sorted(sum(names[j] in hosts for j in idx.tolist()) for idx in plan.values())
    assert loads == [35, 50, 50]  # largest first onto the least loaded: 50 | 30+20 | 30+5
    unknown = [sum(names[j].startswith("X") for j in idx.tolist()) for idx in plan.values()]
    assert sorted(unknown) == [2, 2, 3]
    # fewer PVs than workers: no empty shard; nothing known: even contiguous split
    assert len(_ioc_shards(["A"], {}, 4)) == 1
    even = _ioc_shards([f"n{i}" for i in range(10)], {}, 3)
    assert sorted(len(v) for v in even.values()) == [3, 3, 4]
