"""Coordinator: sharded reads/puts merged in input order, shared memory, crash recovery, shutdown."""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

import capar
from capar import Coordinator
from conftest import N_SCALARS


def scalars(prefix, n=N_SCALARS):
    return [prefix + f"s{i}" for i in range(n)]


def children():
    """Descendants of this process, without multiprocessing's forkserver and resource tracker."""
    from multiprocessing import forkserver, resource_tracker

    helpers = {getattr(forkserver._forkserver, "_forkserver_pid", None),
               getattr(resource_tracker._resource_tracker, "_pid", None)}
    return {p.pid for p in psutil.Process().children(recursive=True)} - helpers


def shm_segments():
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")} if os.path.isdir("/dev/shm") else set()


@pytest.fixture(scope="module")
def coord():
    with Coordinator(2) as c:
        yield c


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_sharded_get_matches_single_process(prefix, method):
    names = scalars(prefix, 1000)[::-1] + [prefix + "ao", prefix + "nothere", prefix + "mbbo", ""]
    with Coordinator(2, start_method=method) as c:
        snap = c.get(names, connection_timeout=1.0)
        assert len(c.pids) == 2
    ref = capar.acquire(names, connection_timeout=1.0)
    assert snap.names.tolist() == names
    assert snap.ok.tolist() == ref.ok.tolist()
    assert snap.values[:1000].tolist() == [float(i) for i in range(999, -1, -1)]
    assert snap.values[1000] == 3.5 and snap.values[1002] == 2 and type(snap.values[1002]) is int
    assert snap.error[1001] == "not connected" and snap.error[1003].startswith("bad name")
    assert not snap.diff(ref)


def test_arrays_through_shared_memory_leave_no_segment(prefix, coord):
    before = shm_segments()
    snap = coord.get([prefix + "wf_big", prefix + "wf_double", prefix + "wf_string", prefix + "ao"], form="ctrl")
    assert snap.ok.all()
    assert snap.values[0].shape == (200000,) and snap.values[1].tolist() == [1, 2, 3, 4, 5]
    assert snap.values[2] == ["a", "bb", "ccc"] and snap.ctrl["units"][3] == "mm"
    assert shm_segments() == before
    with Coordinator(1, shm_threshold=None) as pickled:
        p = pickled.get([prefix + "wf_big"])
    assert np.array_equal(p.values[0], snap.values[0])


def test_sharded_group_repeat_and_put(prefix, coord):
    names = scalars(prefix)[1200:1300]
    with coord.connect(names) as g:
        first = g.get()
        assert first.ok.all()
        res = g.put([float(i) + 0.5 for i in range(100)], wait=True, timeout=10)
        assert res.ok.all()
        assert g.get().value.tolist() == [float(i) + 0.5 for i in range(100)]
        assert g.put(first.values.tolist(), wait=True).ok.all()
        assert g.get().value.tolist() == first.value.tolist()
        with pytest.raises(ValueError):
            g.put([1.0])


def test_put_per_pv_status(prefix, coord):
    res = coord.put([prefix + "s1210", prefix + "nothere", prefix + "longout"], [1.5, 2.0, "abc"], wait=True,
                    connection_timeout=0.5)
    assert res.ok.tolist() == [True, False, False]
    assert res.error[1] == "not connected" and "longout" in res.error[2]
    assert capar.caget_many([prefix + "s1210", prefix + "longout"]) == [1.5, 42]
    capar.caput(prefix + "s1210", 1210.0, wait=True)


def test_bad_input_before_any_process(prefix, coord):
    pids = coord.pids
    with pytest.raises(TypeError, match="#1"):
        coord.get([prefix + "ao", 5])
    with pytest.raises(TypeError):
        coord.get(prefix + "ao")
    assert coord.pids == pids
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            Coordinator(bad)


def test_remote_exception_keeps_traceback_and_pool_usable(prefix, coord):
    g = coord.connect([prefix + "s1", prefix + "s2"])
    g.close()
    g.closed = False  # force a request for a group the workers no longer have
    with pytest.raises(KeyError) as info:
        g.get()
    assert "in worker" in str(info.value.__cause__)
    assert coord.get([prefix + "s3"]).values[0] == 3.0


def reaped(pid, create_time):
    """True once the process *pid* created at *create_time* is gone: neither alive nor a zombie."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() != create_time  # the pid now names an unrelated process
    except psutil.NoSuchProcess:
        return True
    except psutil.ZombieProcess:
        return False


def casr_channels(ioc, client_port):
    """Channels the IOC's CA server holds for the client whose TCP circuit has local port *client_port*."""
    m = re.search(rf"TCP client at 127\.0\.0\.1:{client_port}\b[^\n]*\n[^\n]*?(\d+) Channels?\b",
                  ioc.shell("casr 1"))
    return int(m.group(1)) if m else 0


def worker_deaths(caplog, code):
    return [r.getMessage() for r in caplog.records
            if r.name == "capar" and f"worker died (exit code {code}) while serving a request" in r.getMessage()]


def test_worker_killed_during_get_yields_complete_snapshot(ioc, prefix, coord, caplog):
    caplog.set_level(logging.WARNING, logger="capar")
    # 20,000 positions; the second shard (the victim's) ends with a PV that never connects, so the victim
    # stays inside this get (waiting for it) for connection_timeout: the kill cannot miss the call
    names = scalars(prefix) * 10 + [prefix + "nothere"]
    victim = coord.pids[1]
    victim_ct = psutil.Process(victim).create_time()
    killed = {}

    def kill_while_serving():
        # SIGKILL the victim once it holds channels at the IOC for this get (a circuit of its own to the
        # IOC's port, with channels on it in the server's "casr 1"): it is then serving the call
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not killed:
            try:
                ports = [c.laddr.port for c in psutil.Process(victim).net_connections("tcp")
                         if c.raddr and c.raddr.port == ioc.port and c.status == psutil.CONN_ESTABLISHED]
            except psutil.Error:
                return
            n = sum(casr_channels(ioc, p) for p in ports)
            if n:
                killed.update(channels=n, at=time.monotonic())
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:  # died otherwise: the log check below fails
                    pass
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_while_serving)
    t0 = time.monotonic()
    killer.start()
    snap = coord.get(names, timeout=5, connection_timeout=2.0)
    t1 = time.monotonic()
    killer.join()
    assert killed, "the victim never held channels for the get: it was not killed"
    assert t0 < killed["at"] < t1  # the kill landed during the call, before it returned
    assert killed["channels"] > 0
    # the parent saw the victim die while its reply was pending (not a hang, not a late death) ...
    assert len(worker_deaths(caplog, -9)) == 1, caplog.text
    assert victim not in coord.pids and len(coord.pids) == 2
    # ... and retried its shard on the replacement: without the retry that shard would say "worker died ..."
    assert snap.ok[:-1].all(), snap.failed[:3]
    assert snap.error[-1] == "not connected"
    # other tests use some of these scalars as scratch PVs: compare with what the IOC holds now
    now = capar.acquire(scalars(prefix)).value.tolist()
    assert snap.value[:2000].tolist() == now and snap.value[-2001:-1].tolist() == now
    assert reaped(victim, victim_ct)  # the coordinator reaped the killed worker: no zombie is left


def test_crashed_worker_in_connected_group_is_replaced(prefix, coord, caplog):
    caplog.set_level(logging.WARNING, logger="capar")
    names = scalars(prefix)[:500]
    with coord.connect(names) as g:
        assert g.get().ok.all()
        victim = coord.pids[0]
        victim_ct = psutil.Process(victim).create_time()
        # stop the worker, queue the crash request: it dies (exit code 139, like a segfault) as soon as it
        # runs again -- which the timer makes happen 0.3 s into the next get, while that get waits for it
        os.kill(victim, signal.SIGSTOP)
        capar.testing.crash_worker(coord, 0, 139)
        resumed = {}

        def resume():
            resumed["at"] = time.monotonic()
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:  # already replaced (the get gave up on it): the asserts say so
                pass

        timer = threading.Timer(0.3, resume)
        t0 = time.monotonic()
        timer.start()
        try:
            snap = g.get(timeout=5)
            t1 = time.monotonic()
        finally:
            timer.join()
        assert t0 < resumed["at"] < t1  # the crash happened during the get
        assert len(worker_deaths(caplog, 139)) == 1, caplog.text  # ... while its reply was pending
        assert victim not in coord.pids and len(coord.pids) == 2
        assert reaped(victim, victim_ct)
        # the replacement re-created its part of the group and the get was retried there
        assert snap.ok.all() and snap.value.tolist() == [float(i) for i in range(500)]
        assert g.get().value.tolist() == [float(i) for i in range(500)]


def test_hung_worker_deadline_holds(prefix):
    with Coordinator(2) as c:
        names = scalars(prefix, 200)
        c.get(names)
        stopped = c.pids[0]
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.monotonic()
        snap = c.get(names, timeout=0.5, connection_timeout=0.5)
        elapsed = time.monotonic() - t0
        assert elapsed < 0.5 + 0.5 + 2.0 + 2.0
        assert not snap.ok[:100].any() and set(snap.error[:100]) == {"worker timed out"}
        assert snap.ok[100:].all()
        assert stopped not in c.pids
        assert c.get(names).ok.all()


def test_close_leaves_no_children(prefix):
    before = children()
    c = Coordinator(2)
    c.get(scalars(prefix, 10))
    assert len(children() - before) == 2
    t0 = time.monotonic()
    c.close()
    assert time.monotonic() - t0 < 2.0
    assert children() - before == set()
    with pytest.raises(RuntimeError):
        c.get(scalars(prefix, 1))
    with pytest.raises(ZeroDivisionError):
        with Coordinator(2) as c2:
            c2.get(scalars(prefix, 10))
            1 / 0
    assert children() - before == set()


def test_ctrl_c_during_get_stops_workers(prefix):
    before = children()
    c = Coordinator(2)
    c.get(scalars(prefix, 10))
    os.kill(c.pids[0], signal.SIGSTOP)  # make the next get wait
    timer = threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        c.get(scalars(prefix, 10), timeout=30)
    assert time.monotonic() - t0 < 0.3 + 2.0
    timer.join()
    assert children() - before == set()


def test_interpreter_exit_stops_workers(ioc, prefix):
    code = (
        "import capar, os\n"
        "if __name__ == '__main__':\n"
        f"    c = capar.Coordinator(2); c.get([{prefix + 's1'!r}])\n"
        "    print(' '.join(map(str, c.pids)), flush=True)\n"
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 30
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 2
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids)
    assert "FATAL" not in out.stderr and "Undefined Behavior" not in out.stderr


def test_sharded_monitor_complete_sequences(prefix, coord):
    names = [prefix + f"c{i}" for i in range(20)] + [prefix + "counter", prefix + "nothere"]
    seen: dict[int, list] = {}
    with coord.monitor(names, batch_interval=0.05, connection_timeout=1.0) as mon:
        t0 = time.monotonic()
        kinds = set()
        for batch in mon:
            for i, v, k in zip(batch.index.tolist(), batch.value.tolist(), batch.kind.tolist()):
                kinds.add((i, k))
                if k == 0:
                    seen.setdefault(i, []).append(v)
            if time.monotonic() - t0 > 1.5:
                break
        assert mon.overflow == 0
    assert sorted(seen) == list(range(21))  # every live PV, indices in the caller's order
    for i, vals in seen.items():
        assert len(vals) >= 5, (names[i], vals)
        assert all(b - a == 1 for a, b in zip(vals, vals[1:])), (names[i], vals)
    assert (21, 2) in kinds  # the unknown PV is reported as disconnected/never connected
    assert coord.get([prefix + "ao"]).values[0] == 3.5  # the coordinator still serves requests
