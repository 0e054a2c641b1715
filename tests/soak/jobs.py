"""Soak workloads, each run as a fresh process by tests/soak/test_soak.py against a private IOC.

    python tests/soak/jobs.py CASE ARG...

A fresh process measures capar alone (nothing left by other tests) and has its own CA context for the
private IOC.  Protocol: one JSON object per stdout line.  A line with "tag" is a checkpoint: the job then
waits for an empty line on stdin, so the test can ask the IOC how many channels it still holds (``casr``)
while the job is quiescent.  The last line has "result".
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
import weakref
from typing import Any

import numpy as np
import psutil

import capar
from capar import ca


def emit(obj: dict) -> None:
    os.write(1, (json.dumps(obj) + "\n").encode())


def usage() -> dict:
    """RSS (MiB), open fds, threads, Python objects tracked by the gc and capar-side channel/subscription
    counts of this process."""
    me = psutil.Process()
    contexts = list(ca.context.registry().contexts.values())
    return {"rss_mb": me.memory_info().rss / 2**20, "fds": me.num_fds(), "threads": me.num_threads(),
            "py_objects": len(gc.get_objects()), "capar_channels": sum(len(c.channels) for c in contexts),
            "capar_subscriptions": sum(len(c.subscriptions) for c in contexts)}


def checkpoint(tag: str, **extra: Any) -> None:
    gc.collect()
    emit({"tag": tag, **usage(), **extra})
    sys.stdin.readline()


def shm_entries() -> list[str]:
    """POSIX shared memory segments and named semaphores of multiprocessing (all users)."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(("psm_", "sem.mp-", "mp-")))
    except FileNotFoundError:
        return []


# -- cases ---------------------------------------------------------------------------------------------

def group_cycles(prefix: str, n_pvs: int, cycles: int, first: int) -> None:
    """Group create -> get -> close *cycles* times; every 10th Group is dropped without close()."""
    names = [prefix + f"s{i}" for i in range(n_pvs)]
    seconds, bad = [], 0
    for c in range(cycles):
        t0 = time.perf_counter()
        if c % 10 == 5 and c != cycles - 1:
            bad += int((~capar.Group(names).get().ok).sum())  # dropped: the next Group clears it
        else:
            with capar.Group(names) as g:
                bad += int((~g.get().ok).sum())
        seconds.append(time.perf_counter() - t0)
        if c + 1 == first:
            checkpoint("first")
    checkpoint("last")
    emit({"result": {"failed_reads": bad, "cycle_ms": _stats(seconds)}})


def _read_some(names: list, out: Any) -> None:
    snap = capar.acquire(names, timeout=5.0)
    out.put(int(snap.ok.sum()))


def process_starts(prefix: str, n_procs: int, n_coord: int, batch: int) -> None:
    """*n_procs* CAProcess starts (*batch* at a time, each reading 10 PVs) and *n_coord* Coordinators."""
    from multiprocessing import forkserver, resource_tracker

    from capar.parallel.process import get_context

    names = [prefix + f"s{i}" for i in range(10)]
    q = get_context().Queue()

    def helpers() -> set:
        return {getattr(forkserver._forkserver, "_forkserver_pid", None),
                getattr(resource_tracker._resource_tracker, "_pid", None)} - {None}

    def workers() -> list[int]:
        return sorted(p.pid for p in psutil.Process().children(recursive=True)
                      if p.pid not in helpers() and p.status() != psutil.STATUS_ZOMBIE)

    shm_before = shm_entries()
    exitcodes: list = []
    ok_reads = 0
    started = 0
    coord_ok = 0

    def run_procs(n: int) -> None:
        nonlocal ok_reads, started
        for _ in range(0, n, batch):
            procs = [capar.CAProcess(target=_read_some, args=(names, q)) for _ in range(batch)]
            for p in procs:
                p.start()
            ok_reads += sum(q.get(timeout=60) for _ in procs)
            for p in procs:
                p.join(60)
                exitcodes.append(p.exitcode)
                p.close()
            started += len(procs)

    def run_coordinators(n: int) -> None:
        nonlocal coord_ok
        for _ in range(n):
            with capar.Coordinator(2) as co:
                coord_ok += int(co.get(names * 100).ok.sum())

    run_procs(batch)           # warm up: forkserver and resource tracker start with the first ones
    run_coordinators(1)
    checkpoint("first", workers=workers(), shm=shm_entries())
    run_procs(n_procs - batch)
    run_coordinators(n_coord - 1)
    checkpoint("last", workers=workers(), shm=shm_entries())
    emit({"result": {"started": started, "exitcodes_nonzero": [c for c in exitcodes if c != 0],
                     "ok_reads": ok_reads, "coord_ok": coord_ok, "shm_before": shm_before}})


def monitor_run(prefix: str, n_pvs: int, seconds: float, sample_every: float) -> None:
    """One Monitor on *n_pvs* 10 Hz counters for *seconds*; count every gap in every PV's sequence."""
    names = [prefix + f"c{i}" for i in range(n_pvs)]
    last = np.full(n_pvs, np.nan)
    gaps = events = batches = overflow = disconnects = 0
    samples = []
    with capar.Monitor(names, connection_timeout=30.0) as mon:
        assert mon.connected.all(), int(mon.connected.sum())
        t0 = time.monotonic()
        next_sample = t0
        while True:
            now = time.monotonic()
            if now >= next_sample:
                samples.append({"t": round(now - t0, 1), **usage()})
                next_sample += sample_every
            if now - t0 >= seconds:
                break
            batch = mon.get_batch(timeout=1.0)
            if batch is None:
                continue
            batches += 1
            overflow += batch.overflow
            disconnects += int((batch.kind == 2).sum())
            val = batch.kind == 0
            idx, v = batch.index[val], batch.value[val]
            events += len(idx)
            order = np.argsort(idx, kind="stable")  # per PV, in arrival order
            i_s, v_s = idx[order], v[order]
            head = np.ones(len(i_s), dtype=bool)
            head[1:] = i_s[1:] != i_s[:-1]
            prev = np.where(head, last[i_s], np.concatenate(([np.nan], v_s[:-1])))
            known = ~np.isnan(prev)
            gaps += int((v_s[known] - prev[known] != 1.0).sum())
            tail = np.ones(len(i_s), dtype=bool)
            tail[:-1] = i_s[1:] != i_s[:-1]
            last[i_s[tail]] = v_s[tail]
        never = int(np.isnan(last).sum())
    checkpoint("closed")
    emit({"result": {"events": events, "batches": batches, "gaps": gaps, "overflow": overflow,
                     "disconnects": disconnects, "pvs_without_events": never, "samples": samples,
                     "seconds": seconds}})


def pv_objects(prefix: str, n_pvs: int, rounds: int) -> None:
    """*rounds* x (create *n_pvs* PV objects, wait for all, read all, drop them).

    Dropping is done the two pyepics ways, alternately: ``pv.disconnect()`` + ``ca.clear_channel(chid)``,
    and ``ca.clear_cache()``.
    """
    names = [prefix + f"s{i}" for i in range(n_pvs)]
    alive_after = []
    bad = 0
    seconds = []
    for r in range(rounds):
        t0 = time.perf_counter()
        pvs = [capar.PV(n) for n in names]
        deadline = time.monotonic() + 30
        while not all(pv.connected for pv in pvs) and time.monotonic() < deadline:
            time.sleep(0.01)
        values = [pv.get(timeout=5) for pv in pvs]
        bad += sum(v is None for v in values)
        refs = [weakref.ref(pv) for pv in pvs]
        if r % 2 == 0:
            _disconnect_and_clear(pvs)
        else:
            ca.clear_cache()
        del pvs, values
        gc.collect()
        alive_after.append(sum(ref() is not None for ref in refs))
        seconds.append(time.perf_counter() - t0)
        checkpoint(f"round{r}", pv_objects_alive=alive_after[-1])
    emit({"result": {"failed_gets": bad, "round_s": _stats(seconds)}})


def _disconnect_and_clear(pvs: list) -> None:
    for pv in pvs:
        chid = pv.chid
        pv.disconnect()
        ca.clear_channel(chid)


def _stats(xs: list) -> dict:
    a = np.asarray(xs) * (1e3 if xs and max(xs) < 1 else 1)
    return {"min": round(float(a.min()), 2), "median": round(float(np.median(a)), 2),
            "max": round(float(a.max()), 2), "first10": round(float(a[:10].mean()), 2),
            "last10": round(float(a[-10:].mean()), 2)}


CASES = {"group_cycles": group_cycles, "process_starts": process_starts, "monitor_run": monitor_run,
         "pv_objects": pv_objects}

if __name__ == "__main__":
    case, prefix, *args = sys.argv[1:]
    CASES[case](prefix, *[float(a) if "." in a else int(a) for a in args])
