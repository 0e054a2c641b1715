"""Soak: nothing grows over long runs (issue #8).

Every case runs twice: a short version (a few seconds) in ``make test`` and the full one, marked
``soak``, in ``make soak``.  Each workload runs in a fresh process (tests/soak/jobs.py) against a private
loopback IOC, so the figures are capar's alone; the IOC itself (``casr``) counts the channels the
client still holds at each checkpoint.  Figures are printed (``make soak`` shows them) and bounded:

* server-side channels after close/clear: exactly 0 — any leaked channel is visible there;
* open fds and threads, last checkpoint vs first: at most +2 — a CA circuit (one socket, a send and a
  receive thread) may still be closing when the last channel of the circuit was just cleared;
* Python objects tracked by the garbage collector, last vs first: at most +OBJ_SLACK — exact, so it
  catches what RSS cannot: one object kept per PV per cycle would be +950,000 in the long Group run and
  +80,000 in the long PV run;
* RSS, last vs first checkpoint: at most +RSS_SLACK_MB.  Why that bound: RSS is not a leak detector
  below a few MiB — libca's free lists keep their high-water mark and glibc gives each libca thread its
  own arena, so RSS climbs for the first rounds and then stays flat (measured: +18 MiB over the first 3
  rounds of 10,000 PVs, then +0.1 MiB over the next 6).  The bound is checked after that warm-up; a
  leak of 1 KiB per PV (a Python object with its dict) is +10 MiB per round of 10,000 PVs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from capar.testing import IOC, db_counters, db_scalars, unique_prefix

JOBS = Path(__file__).with_name("jobs.py")
RSS_SLACK_MB = 8.0
OBJ_SLACK = 2000  # gc-tracked objects: module-level caches (re, logging, numpy) settling
OS_SLACK = 2  # fds / threads of one CA circuit that may still be closing


def soak_params(short: tuple, long: tuple, long_timeout: float) -> Any:
    return pytest.mark.parametrize("size", [
        pytest.param(short, id="short"),
        pytest.param(long, id="long", marks=[pytest.mark.soak, pytest.mark.timeout(long_timeout)]),
    ])


def run_job(ioc: IOC, case: str, *args: Any) -> tuple[list[dict], dict]:
    """Run one soak job; return (checkpoints with the server's channel count added, result)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    env.update(ioc.env)
    checkpoints: list[dict] = []
    result: dict = {}
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, str(JOBS), case, str(ioc.prefix), *map(str, args)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        try:
            for line in child.stdout:
                rec = json.loads(line)
                if "tag" in rec:
                    rec["server_channels"] = ioc.wait_client_channels(0)
                    checkpoints.append(rec)
                    child.stdin.write("\n")
                    child.stdin.flush()
                elif "result" in rec:
                    result = rec["result"]
            rc = child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stdin.close()
        err.seek(0)
        stderr = err.read()
    assert rc == 0, stderr[-3000:]
    assert "FATAL" not in stderr and "Undefined Behavior" not in stderr, stderr[-3000:]
    assert result, stderr[-3000:]
    return checkpoints, result


def report(title: str, checkpoints: list[dict], result: dict) -> None:
    print(f"\n== soak: {title} ==")
    for c in checkpoints:
        print(f"  {c['tag']:>8}: RSS {c['rss_mb']:7.1f} MiB  fds {c['fds']:4d}  threads {c['threads']:3d}  "
              f"py objects {c['py_objects']}  server channels {c['server_channels']}  "
              f"capar channels {c['capar_channels']}  "
              f"subscriptions {c['capar_subscriptions']}")
    print("  " + json.dumps({k: v for k, v in result.items() if k != "samples"}))


def assert_flat(first: dict, last: dict) -> None:
    assert last["py_objects"] - first["py_objects"] <= OBJ_SLACK, (first, last)
    assert last["rss_mb"] - first["rss_mb"] <= RSS_SLACK_MB, (first, last)
    assert last["fds"] <= first["fds"] + OS_SLACK, (first, last)
    assert last["threads"] <= first["threads"] + OS_SLACK, (first, last)


@pytest.fixture(scope="module")
def scalars_ioc() -> Iterator[IOC]:
    P = unique_prefix("K")
    with IOC(db_scalars(P, 10_000), prefix=P, name="soak-scalars") as ioc:
        yield ioc


# --------------------------------------------------------------------------------------------------

@soak_params(short=(1000, 60, 10), long=(1000, 1000, 50), long_timeout=1800)
def test_group_cycles(scalars_ioc, size):
    """Group create -> get -> close on 1,000 PVs, first checkpoint vs last (every 10th Group dropped
    without close(): its channels must still be released)."""
    n_pvs, cycles, first = size
    checkpoints, result = run_job(scalars_ioc, "group_cycles", n_pvs, cycles, first)
    report(f"{cycles} Group cycles x {n_pvs} PVs (checkpoints after cycle {first} and {cycles})",
           checkpoints, result)
    assert result["failed_reads"] == 0
    assert [c["server_channels"] for c in checkpoints] == [0, 0]
    assert_flat(*checkpoints)


@soak_params(short=(20, 3, 10), long=(500, 50, 10), long_timeout=1800)
def test_process_starts_and_coordinators(scalars_ioc, size):
    """CAProcess starts (10 at a time, each reading 10 PVs) and Coordinator open/get/close cycles."""
    n_procs, n_coord, batch = size
    checkpoints, result = run_job(scalars_ioc, "process_starts", n_procs, n_coord, batch)
    report(f"{n_procs} CAProcess starts + {n_coord} Coordinators", checkpoints, result)
    assert result["started"] == n_procs
    assert result["exitcodes_nonzero"] == []
    assert result["ok_reads"] == 10 * n_procs
    assert result["coord_ok"] == 1000 * n_coord
    first, last = checkpoints
    assert first["workers"] == [] and last["workers"] == []  # no process left besides mp's two helpers
    new_shm = set(last["shm"]) - set(result["shm_before"])
    assert not new_shm, f"left in /dev/shm: {sorted(new_shm)}"
    assert [c["server_channels"] for c in checkpoints] == [0, 0]
    assert_flat(first, last)


@soak_params(short=(500, 5.0, 1.0), long=(5000, 600.0, 10.0), long_timeout=1200)
def test_monitor_memory_flat_no_gaps(size):
    """A Monitor on N counters updating at 10 Hz: every update of every PV arrives, RSS stays flat."""
    n_pvs, seconds, every = size
    P = unique_prefix("M")
    with IOC(db_counters(P, n_pvs), prefix=P, name="soak-monitor") as ioc:
        checkpoints, result = run_job(ioc, "monitor_run", n_pvs, seconds, every)
    samples = result["samples"]
    report(f"Monitor on {n_pvs} PVs x 10 Hz for {seconds:.0f} s", checkpoints, result)
    for s in samples[:: max(1, len(samples) // 10)] + samples[-1:]:
        print(f"    t={s['t']:6.1f} s  RSS {s['rss_mb']:7.1f} MiB  fds {s['fds']}  threads {s['threads']}  "
              f"py objects {s['py_objects']}")
    assert result["gaps"] == 0 and result["overflow"] == 0 and result["disconnects"] == 0
    assert result["pvs_without_events"] == 0
    # 10 Hz per PV: at least 80% of the nominal rate arrives (the IOC's scan thread shares 2 cores)
    assert result["events"] >= 0.8 * 10 * n_pvs * (seconds - 1.0)
    assert checkpoints[0]["server_channels"] == 0
    settled = [s for s in samples if s["t"] >= min(60.0, seconds / 2)]  # after the ring/arenas warm up
    assert settled[-1]["rss_mb"] - settled[0]["rss_mb"] <= RSS_SLACK_MB, (settled[0], settled[-1])
    assert settled[-1]["fds"] == settled[0]["fds"] and settled[-1]["threads"] == settled[0]["threads"]
    assert settled[-1]["py_objects"] - settled[0]["py_objects"] <= OBJ_SLACK, (settled[0], settled[-1])


@soak_params(short=(1000, 3), long=(10_000, 10), long_timeout=1800)
def test_pv_objects_created_and_dropped(scalars_ioc, size):
    """N PV objects created, connected, read and dropped (disconnect + clear_channel, or clear_cache)."""
    n_pvs, rounds = size
    checkpoints, result = run_job(scalars_ioc, "pv_objects", n_pvs, rounds)
    report(f"{rounds} rounds x {n_pvs} PV objects", checkpoints, result)
    assert result["failed_gets"] == 0
    for c in checkpoints:
        assert c["server_channels"] == 0, c
        assert c["capar_channels"] == 0 and c["capar_subscriptions"] == 0, c
        assert c["pv_objects_alive"] == 0, c
    # objects from round 1 on (round 0 fills module caches); RSS over the second half (see module doc)
    assert checkpoints[-1]["py_objects"] - checkpoints[1]["py_objects"] <= OBJ_SLACK, checkpoints
    assert_flat(checkpoints[len(checkpoints) // 2], checkpoints[-1])
