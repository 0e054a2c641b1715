"""DaskCoordinator on a real Dask LocalCluster (2 worker processes, 1 thread each) against 2 loopback IOCs.

One cluster and one IOC set for the module (a cluster starts in about a second, the IOCs in two).  The
workers get the IOCs' EPICS environment from the coordinator (``epics_env=``); capar.acquire, the
reference, runs in a fresh ClientProcess with the same environment.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import psutil
import pytest

distributed = pytest.importorskip("distributed", reason="the 'dask' extra is not installed")

import capar  # noqa: E402
from capar.testing import ClientProcess, IOCSet  # noqa: E402

N_SCALARS = 2500     # per IOC: 5,000 scalars in all
N_COUNTERS = 500     # per IOC: 1,000 counters at 10 Hz in all


@pytest.fixture(scope="module")
def iocs():
    s = IOCSet.scalars(2, N_SCALARS, counters_per_ioc=N_COUNTERS, tag="D")
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def scalars(iocs):
    return [n for n in iocs.all_names if ":s" in n]


@pytest.fixture(scope="module")
def counters(iocs):
    return [n for n in iocs.all_names if ":c" in n]


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1", silence_logs=logging.ERROR)
    client = Client(lc)
    yield client
    procs = [psutil.Process(p) for p in client.run(os.getpid).values()]  # workers now (some restarted)
    client.close()
    lc.close()
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, f"Dask workers left running: {alive}"
    shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert not {e for e in shm_after - shm_before if e.startswith("psm_")}, "shared memory left behind"


@pytest.fixture(scope="module")
def dc(cluster, iocs):
    with capar.DaskCoordinator(cluster, epics_env=iocs.env) as d:
        yield d


@pytest.fixture(scope="module")
def reference(iocs):
    with ClientProcess(iocs.env, name="reference") as c:
        yield c


def _assert_same(snap, ref):
    assert snap.names.tolist() == ref.names.tolist()
    assert snap.ok.tolist() == ref.ok.tolist()
    assert snap.error.tolist() == ref.error.tolist()
    ok = ref.ok
    assert np.array_equal(snap.value[ok], ref.value[ok])
    assert snap.status[ok].tolist() == ref.status[ok].tolist()
    assert snap.severity[ok].tolist() == ref.severity[ok].tolist()


@pytest.mark.parametrize("shard_by", ["ioc", "hash", "index"])
def test_get_is_identical_to_acquire(cluster, iocs, scalars, reference, shard_by):
    """2,000 names with duplicates, bad and unknown names: the same Snapshot as capar.acquire."""
    rng = np.random.default_rng(7)
    names = [scalars[i] for i in rng.integers(0, len(scalars), 1990)]
    names += [scalars[0], scalars[0], "bad name", "", "D-unknown:pv", "D-unknown:pv2", scalars[-1],
              "x" * 2000, scalars[1], "D-unknown:pv"]
    with capar.DaskCoordinator(cluster, shard_by=shard_by, epics_env=iocs.env) as d:
        assert d.processes == 2
        snap = d.get(names, connection_timeout=1.0, timeout=2.0)
    ref = reference.run("capar.acquire(names, connection_timeout=1.0, timeout=2.0)", names=names)
    assert len(names) == 2000 and snap.ok.sum() == ref.ok.sum() == 1994
    _assert_same(snap, ref)


def test_hash_sharding_moves_about_one_kth():
    from capar.parallel.shard import shard_by_hash

    names = [f"PV:{i}" for i in range(20_000)]
    before = shard_by_hash(names, ["w0", "w1", "w2", "w3"])
    after = shard_by_hash(names, ["w0", "w1", "w2", "w3", "w4"])
    owner = lambda sh: {int(j): k for k, v in sh.items() for j in v}  # noqa: E731
    a, b = owner(before), owner(after)
    moved = sum(a[j] != b[j] for j in range(len(names))) / len(names)
    assert 0.17 < moved < 0.23  # ~1/5: only what the new worker wins moves
    assert all(4000 < len(v) < 6000 for v in before.values())  # balanced
    # stable across processes (PYTHONHASHSEED differs per process): the same plan in a child
    import subprocess
    import sys

    code = ("from capar.parallel.shard import shard_by_hash;"
            "print(sorted((k, int(v.sum())) for k, v in shard_by_hash(['PV:%d' % i for i in range(20000)],"
            " ['w0', 'w1', 'w2', 'w3']).items()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONHASHSEED="12345"))
    assert out.stdout.strip() == str(sorted((k, int(v.sum())) for k, v in before.items())), out.stderr


def test_connected_group_keeps_its_channels_and_releases_them(dc, iocs, scalars):
    """connect(5000): exactly 5,000 channels on the IOCs over 20 gets, 0 within 5 s of close()."""
    base = sum(ioc.client_channels() for ioc in iocs)
    g = dc.connect(scalars, connection_timeout=10.0)
    try:
        for _ in range(20):
            snap = g.get(timeout=5.0)
            assert snap.ok.all()
            assert snap.value.tolist() == [float(i) for i in range(len(scalars))]
        assert sum(ioc.client_channels() for ioc in iocs) - base == len(scalars) == 5000
        res = g.put([float(i) for i in range(len(scalars))], wait=True, timeout=10.0)
        assert res.ok.all()
    finally:
        g.close()
    t0 = time.monotonic()
    assert sum(ioc.wait_client_channels(0, timeout=5.0) for ioc in iocs) == 0
    assert time.monotonic() - t0 < 5.0


def test_monitor_1000_counters_at_10hz_has_no_gaps(dc, counters):
    """Every counter's updates arrive in order with no missing step, merged in the caller's order."""
    last = np.full(len(counters), np.nan)
    steps = np.zeros(len(counters), dtype=np.int64)
    with dc.monitor(counters, batch_interval=0.05, connection_timeout=10.0) as mon:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5.0:
            b = mon.get_batch(timeout=1.0)
            if b is None:
                continue
            assert b.overflow == 0
            vals = b.value[b.kind == 0]
            idx = b.index[b.kind == 0]
            for i, v in zip(idx.tolist(), vals.tolist()):
                if not np.isnan(last[i]):
                    assert v == last[i] + 1, (counters[i], last[i], v)  # no gap, no reordering
                    steps[i] += 1
                last[i] = v
    assert (steps >= 35).all(), np.sort(steps)[:10]  # ~50 updates in 5 s at 10 Hz, every counter


def test_worker_killed_during_get_is_replaced_and_the_shard_retried(cluster, iocs, scalars, caplog):
    """SIGKILL one worker while a get is in flight: its shard moves to a live worker (the nanny's restart)
    and is retried once; every PV is answered, none is lost."""
    caplog.set_level(logging.WARNING, logger="capar")
    with capar.DaskCoordinator(cluster, shard_by="index", epics_env=iocs.env) as d:
        g = d.connect(scalars, connection_timeout=10.0)
        assert g.get().ok.all()
        victim_addr = d.workers[0]
        pid = cluster.run(os.getpid, workers=[victim_addr])[victim_addr]
        victim = psutil.Process(pid)
        # stop the worker, then kill it while the get waits for it
        victim.suspend()
        import threading

        threading.Timer(0.5, victim.kill).start()
        snap = g.get(timeout=10.0)
        assert snap.ok.all(), set(snap.error[~snap.ok].tolist())
        assert snap.value.tolist() == [float(i) for i in range(len(scalars))]
        assert victim_addr not in d.workers and len(set(d.workers)) >= 1
        assert any("lost while serving a request" in r.getMessage() for r in caplog.records), caplog.text
        assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE
        # the group lives on the replacement: later reads work without reconnecting by hand
        assert g.get().ok.all()
        g.close()
    cluster.wait_for_workers(2, timeout=30)


def test_hung_worker_times_out_at_the_deadline(cluster, iocs, scalars):
    """A worker that stops answering (SIGSTOP): its PVs get "worker timed out" soon after the deadline,
    the others are read, and the next call runs on the live worker."""
    with capar.DaskCoordinator(cluster, shard_by="index", epics_env=iocs.env) as d:
        addr = d.workers[0]
        victim = psutil.Process(cluster.run(os.getpid, workers=[addr])[addr])
        victim.suspend()
        try:
            t0 = time.monotonic()
            snap = d.get(scalars[:1000], connection_timeout=1.0, timeout=1.0)
            elapsed = time.monotonic() - t0
            hung = snap.error == "worker timed out"
            assert hung.any() and (snap.ok == ~hung).all(), set(snap.error.tolist())
            assert elapsed < 1.0 + 1.0 + 2.0 + 3.0  # the budgets + grace, never a hang (+ moving the slot)
            assert addr not in d.workers
            assert d.get(scalars[:1000], connection_timeout=5.0).ok.all()
        finally:
            victim.resume()


def test_fork_workers_are_refused_when_libca_is_loaded(tmp_path):
    """A process that has loaded libca forks its Dask workers: the worker plugin refuses, the
    coordinator raises a clear error (and a processes=False cluster gets a warning)."""
    import subprocess
    import sys

    script = tmp_path / "forked.py"
    script.write_text(
        "import logging, warnings, dask, capar\n"
        "from distributed import Client, LocalCluster\n"
        "if __name__ == '__main__':\n"
        "    capar.ca.initialize_libca()\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        with Client(LocalCluster(n_workers=1, processes=False, dashboard_address=None,"  # in-process comms
        " silence_logs=logging.ERROR)) as c:\n"
        "            capar.DaskCoordinator(c).close()\n"
        "        print('WARNED', any('share' in str(x.message) for x in w))\n"
        "    dask.config.set({'distributed.worker.multiprocessing-method': 'fork'})\n"
        "    with Client(LocalCluster(n_workers=1, processes=True, dashboard_address=None, host='127.0.0.1',"
        " silence_logs=logging.ERROR)) as c:\n"
        "        try:\n"
        "            capar.DaskCoordinator(c)\n"
        "        except Exception as exc:\n"
        "            print('REFUSED', 'forked' in str(exc))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert "WARNED True" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "REFUSED True" in out.stdout, out.stdout + out.stderr[-3000:]


def test_import_capar_does_not_import_distributed():
    import subprocess
    import sys

    code = "import sys, capar; capar.Coordinator; print('distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_workers_pin_the_shards_and_close_releases_open_groups(cluster, iocs, scalars):
    """workers= keeps every shard on the named worker; close() releases groups left open."""
    info = cluster.scheduler_info()["workers"]
    addr, first = sorted((a, w["name"]) for a, w in info.items())[0]
    base = sum(ioc.client_channels() for ioc in iocs)
    d = capar.DaskCoordinator(cluster, workers=[first], epics_env=iocs.env)
    assert d.processes == 1 and d.workers == [addr]
    g = d.connect(scalars[:3000], connection_timeout=10.0)  # left open on purpose
    assert g.get().ok.all()
    assert sum(ioc.client_channels() for ioc in iocs) - base == 3000
    d.close()
    t0 = time.monotonic()
    while sum(ioc.client_channels() for ioc in iocs) != base and time.monotonic() - t0 < 5.0:
        time.sleep(0.1)
    assert sum(ioc.client_channels() for ioc in iocs) == base
    with pytest.raises(RuntimeError, match="closed"):
        d.get(scalars[:1])
    with pytest.raises(ValueError, match="none of the workers"):
        capar.DaskCoordinator(cluster, workers=["no-such-worker"], epics_env=iocs.env)
