"""CAProcess / CAPool: a fresh context per child under every start method, the seed's Queue example."""
from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import warnings

import psutil
import pytest

import capar
from capar import CAPool, CAProcess

METHODS = ["forkserver", "spawn", "fork"]


def _read(name):
    from capar import ca

    return os.getpid(), capar.caget(name), ca.current_context() is not None


def _child_reads_into_queue(names, q):
    pvs = [capar.get_pv(n) for n in names]
    q.put([(p.pvname, p.get(as_string=True)) for p in pvs])


def _raise(x):
    raise KeyError(f"boom {x}")


def _methods_ok(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} not available")


@pytest.mark.parametrize("method", METHODS)
def test_caprocess_with_queue_while_parent_holds_channels(prefix, method):
    _methods_ok(method)
    parent_pv = capar.PV(prefix + "counter")  # the parent holds live channels and a monitor
    assert parent_pv.wait_for_connection(5)
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the documented fork warning
        p = CAProcess(target=_child_reads_into_queue, args=([prefix + "ao", prefix + "mbbo"], q),
                      start_method=method)
        p.start()
    got = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    assert got == [(prefix + "ao", "3.500"), (prefix + "mbbo", "Two")]
    assert parent_pv.get() is not None  # the parent's context is untouched


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_capool_map_and_errors(prefix, method):
    names = [prefix + f"s{i}" for i in range(8)]
    with CAPool(2, start_method=method) as pool:
        out = pool.map(_read, names)
        assert [v for _, v, _ in out] == [float(i) for i in range(8)]
        assert all(has_ctx for _, _, has_ctx in out)
        assert {pid for pid, _, _ in out} <= {c.pid for c in psutil.Process().children(recursive=True)}
        with pytest.raises(KeyError, match="boom 3"):
            pool.apply_async(_raise, (3,)).get(30)
        assert pool.apply_async(_read, (names[1],)).get(30)[1] == 1.0  # still usable
    pool.join()


def test_many_process_starts_no_undefined_behavior(prefix, capfd):
    """Repeated child starts while the parent holds channels: no hangs, no libCom fork warning."""
    assert capar.caget(prefix + "ao") == 3.5
    # 200 fresh processes in all, each reading in its child while the parent holds live channels
    with CAPool(2, maxtasksperchild=1) as pool:
        vals = pool.map(_read, [prefix + "longin"] * 150, chunksize=1)
    pool.join()
    assert len({pid for pid, _, _ in vals}) == 150  # maxtasksperchild=1: one process per task
    procs = []
    for _ in range(50):
        p = CAProcess(target=_read, args=(prefix + "ai",))
        p.start()
        procs.append(p)
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 50
    assert [v for _, v, _ in vals] == [-7] * 150
    err = capfd.readouterr().err
    assert "Undefined Behavior" not in err


def test_bad_pool_arguments():
    with pytest.raises(ValueError):
        CAPool(0)
    with pytest.raises(ValueError):
        CAPool(-1)
    with pytest.raises(ValueError):
        CAProcess(target=print, start_method="nonsense")


def test_capool_terminate_after_ctrl_c_reached_the_workers(prefix):
    """A terminal's Ctrl-C also reaches the workers.  A plain Pool worker dies of KeyboardInterrupt while
    holding the task queue's lock (an idle worker holds it while it waits), and terminate() then hangs
    forever; CAPool workers ignore SIGINT, so terminate() returns and stops them."""
    import signal
    import threading
    import time

    pool = CAPool(2)
    assert pool.map(_read, [prefix + "s1"] * 4)[0][1] == 1.0
    workers = [p.pid for p in pool._pool]
    time.sleep(0.2)  # both idle, one of them blocked in the queue's get() with its lock held
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    if not all(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
               for pid in workers):
        pool._terminate.cancel()  # its terminate() would hang this session at exit: fail instead
        pool._worker_handler._state = multiprocessing.pool.TERMINATE  # stop replacing dead workers
        time.sleep(0.5)
        for p in pool._pool:
            p.kill()
        pytest.fail("a CAPool worker died of SIGINT")
    done = threading.Thread(target=pool.terminate, daemon=True)
    done.start()
    done.join(10)
    assert not done.is_alive(), "CAPool.terminate() hung"
    pool.join()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in workers)
