"""Job scripts as users write them, each run as its own program (``python script.py``).

- the seed's plain ``multiprocessing.Queue()`` (and Lock, Event, Value, ``Manager().dict()``), created
  before and after the parent's first CA call, handed to ``CAProcess`` and to ``CAPool`` initargs;
- scripts that start a CAPool/CAProcess/Coordinator without ``if __name__ == "__main__":``: a clear
  error in the parent, nothing hangs, no process is left;
- a CAPool whose workers die while starting becomes broken instead of respawning them forever.

Every script runs in a new session so that the test can find and stop (by pid) anything it left.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from capar.parallel import CAPool
from capar.parallel.process import UnguardedMainError, _guarded, _NoWorker, check_main_guard
from capar.testing import stop_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver start method")


def _run(path, env=None, timeout=60.0):
    """Run ``python path`` in its own session; return (rc, stdout, stderr); fail on leftovers."""
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{path} did not finish within {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        left = []
        for p in psutil.process_iter():
            try:
                if p.pid != proc.pid and os.getsid(p.pid) == proc.pid:
                    left.append(p)
            except (psutil.Error, OSError):
                continue
        # multiprocessing's forkserver and resource tracker leave when they see the script's pipes close
        left = stop_processes(left, grace=5.0, terminate=False)
    assert not left, f"{path} left processes behind: {[p.pid for p in left]}"
    return proc.returncode, out, err


SEED_QUEUE = '''
import json, sys
from multiprocessing import Event, Lock, Manager, Queue, Value
import capar

P = sys.argv[1] if len(sys.argv) > 1 else {prefix!r}

def child(tag, q, lock, ev, val, d):
    with lock:
        val.value += 1
    d[tag] = capar.caget(P + "ai")
    ev.set()
    q.put((tag, capar.caget(P + "stringin"), capar.caget(P + "longin")))

def pool_init(q, lock, val):
    global POOL_Q
    POOL_Q = q
    with lock:
        val.value += 10

def pool_job(name):
    value = capar.caget(name)
    POOL_Q.put(("pool", name, value))
    return value

if __name__ == "__main__":
    out = {{}}
    with Manager() as manager:
        # created before the parent's first CA call ...
        objs1 = (Queue(), Lock(), Event(), Value("i", 0), manager.dict())
        p = capar.CAProcess(target=child, args=("before",) + objs1)
        p.start()
        out["before"] = objs1[0].get(timeout=30)
        p.join(30)
        out["before_exit"] = p.exitcode
        out["before_flags"] = [objs1[2].is_set(), objs1[3].value, dict(objs1[4])]
        out["parent"] = capar.caget(P + "ai")          # the parent's first CA call
        # ... and after it
        objs2 = (Queue(), Lock(), Event(), Value("i", 0), manager.dict())
        p = capar.CAProcess(target=child, args=("after",) + objs2)
        p.start()
        out["after"] = objs2[0].get(timeout=30)
        p.join(30)
        out["after_exit"] = p.exitcode
        out["after_flags"] = [objs2[2].is_set(), objs2[3].value, dict(objs2[4])]
        q, lock, val = Queue(), Lock(), Value("i", 0)
        with capar.CAPool(2, initializer=pool_init, initargs=(q, lock, val)) as pool:
            out["map"] = pool.map(pool_job, [P + "ai", P + "longin", P + "stringin"])
        out["pool_q"] = sorted(q.get(timeout=30)[1:] for _ in range(3))
        out["pool_inits"] = val.value
    print(json.dumps(out))
'''


def test_seed_plain_queue_lock_event_value_manager(prefix, tmp_path):
    script = tmp_path / "seed_queue.py"
    script.write_text(SEED_QUEUE.format(prefix=prefix))
    rc, out, err = _run(script)
    assert rc == 0, err
    assert "Undefined Behavior" not in err and "Traceback" not in err, err
    res = json.loads(out)
    for tag in ("before", "after"):
        assert res[tag] == [tag, "world", -7]
        assert res[f"{tag}_exit"] == 0
        assert res[f"{tag}_flags"] == [True, 1, {tag: 1.25}]
    assert res["parent"] == 1.25
    assert res["map"] == [1.25, -7, "world"]
    assert res["pool_q"] == sorted([[prefix + "ai", 1.25], [prefix + "longin", -7],
                                    [prefix + "stringin", "world"]])
    assert res["pool_inits"] == 20  # each of the 2 workers ran the initializer with the shared Value


UNGUARDED = {
    "CAPool": "pool = capar.CAPool(2)\nprint(pool.map(abs, [-1, -2]))\npool.terminate()\n",
    "CAProcess": "p = capar.CAProcess(target=print, args=('child ran',))\np.start()\np.join()\n",
    "Coordinator": "c = capar.Coordinator(2)\nprint(c.get([P + 'ai']).value)\nc.close()\n",
}


@pytest.mark.parametrize("what", sorted(UNGUARDED))
def test_unguarded_script_gets_a_clear_error(what, prefix, tmp_path):
    script = tmp_path / f"unguarded_{what}.py"
    script.write_text(f"import capar\nP = {prefix!r}\n" + UNGUARDED[what])
    rc, out, err = _run(script, timeout=30)
    assert rc == 1, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("capar.parallel.process.UnguardedMainError"), err
    assert 'if __name__ == "__main__":' in last and what in last and str(script) in last
    assert "child ran" not in out  # no child started


def test_unguarded_script_in_a_function_called_at_top_level(prefix, tmp_path):
    script = tmp_path / "unguarded_main.py"
    script.write_text("import capar\ndef main():\n    with capar.CAPool(2) as pool:\n"
                      "        print(pool.map(abs, [-1]))\nmain()\n")
    rc, out, err = _run(script, timeout=30)
    assert rc == 1 and "UnguardedMainError" in err and "line 5" in err, err


def test_guard_missed_by_the_parent_is_caught_in_the_child_and_breaks_the_pool(tmp_path):
    """A guard the parent's check cannot see through: the children raise, the pool becomes broken."""
    script = tmp_path / "tricky_guard.py"
    script.write_text(textwrap.dedent("""
        import capar, time
        if __name__ or True:   # looks like a guard, is not one
            t0 = time.monotonic()
            pool = capar.CAPool(1)  # one child: two would interleave their tracebacks on the shared stderr
            try:
                pool.map(abs, [-1, -2])
            except Exception as exc:
                print(type(exc).__name__, round(time.monotonic() - t0, 1))
            pool.terminate()
    """))
    rc, out, err = _run(script, timeout=60)
    # the parent's map raised BrokenProcessPool; the child printed UnguardedMainError
    assert rc == 0, err
    assert out.split()[0] == "BrokenProcessPool", (out, err)
    assert "UnguardedMainError: CAPool started in a child process" in err, err


def _die_in_initializer() -> None:
    os._exit(3)


def test_capool_whose_workers_die_while_starting_is_broken():
    from concurrent.futures.process import BrokenProcessPool

    pool = CAPool(2, initializer=_die_in_initializer)
    try:
        with pytest.raises(BrokenProcessPool, match="exited with code 3"):
            pool.map(abs, [-1, -2, -3])
        with pytest.raises(BrokenProcessPool):
            pool.apply_async(abs, (1,))
        assert pool.broken is not None and "code 3" in pool.broken
        # no endless respawn: every slot ends up as a placeholder, none is a live process
        deadline = time.monotonic() + 10
        while not all(isinstance(w, _NoWorker) for w in pool._pool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(isinstance(w, _NoWorker) for w in pool._pool), pool._pool
        assert pool.Process.started == []
    finally:
        pool.terminate()
        pool.join()


def test_guard_detection_on_source():
    src = textwrap.dedent("""\
        import capar
        x = 1
        if __name__ == "__main__":
            pool = capar.CAPool(2)
        def f():
            pool = capar.CAPool(2)
        try:
            with open("x") as fh:
                pool = capar.CAPool(2)
        except OSError:
            pass
        with capar.CAPool(2) as pool:
            for i in range(2):
                y = 2
        if x:
            z = 3
        while x:
            z = 4
    """)
    assert _guarded(src, 4)
    assert not _guarded(src, 2)
    assert not _guarded(src, 9)       # try/with: unconditional
    assert not _guarded(src, 12)      # a with statement's own header
    assert not _guarded(src, 14)
    assert _guarded(src, 16)          # any if may be a guard in disguise: never refuse on a guess
    assert _guarded(src, 18)
    assert _guarded(src, 99)          # not a statement line: cannot tell
    assert _guarded("this is not python (", 1)


GUARDED_OTHERWISE = {
    "flag": "import capar\nIS_MAIN = __name__ == '__main__'\nif IS_MAIN:\n"
            "    with capar.CAPool(2) as pool:\n        print('ok', pool.map(abs, [-1, -2]))\n",
    "helper": "import capar\ndef is_main():\n    return __name__ == '__main__'\nif is_main():\n"
              "    with capar.CAPool(2) as pool:\n        print('ok', pool.map(abs, [-1, -2]))\n",
}


@pytest.mark.parametrize("kind", sorted(GUARDED_OTHERWISE))
def test_guards_in_other_forms_run(kind, tmp_path):
    script = tmp_path / f"guard_{kind}.py"
    script.write_text(GUARDED_OTHERWISE[kind])
    rc, out, err = _run(script, timeout=60)
    assert rc == 0, err
    assert out.split() == ["ok", "[1,", "2]"], out


def test_script_run_by_an_exec_launcher_runs(tmp_path):
    """A launcher that exec()s a guarded job script in __main__: the launcher's line is not the job's."""
    job = tmp_path / "job.py"
    job.write_text(GUARDED_OTHERWISE["flag"].replace("IS_MAIN = __name__ == '__main__'\nif IS_MAIN:",
                                                      "if __name__ == '__main__':"))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(f"import sys\nexec(compile(open({str(job)!r}).read(), {str(job)!r}, 'exec'))\n")
    rc, out, err = _run(launcher, timeout=60)
    assert rc == 0, err
    assert out.split() == ["ok", "[1,", "2]"], out


def test_check_main_guard_is_quiet_for_fork_and_outside_main():
    # pytest's __main__ is not the caller's module: nothing to check
    check_main_guard("CAPool", "forkserver")
    check_main_guard("CAPool", "fork")
    assert issubclass(UnguardedMainError, RuntimeError)


def test_queue_made_before_import_capar_gets_an_explanation(tmp_path):
    """A fork-context Queue (made before `import capar`) cannot reach a forkserver child: say how to fix it."""
    script = tmp_path / "early_queue.py"
    script.write_text(textwrap.dedent("""
        from multiprocessing import Queue
        q = Queue()                       # default context resolved to 'fork' before capar was imported
        import capar

        def f(q):
            q.put(1)

        if __name__ == "__main__":
            for make in (lambda: capar.CAPool(1, initializer=f, initargs=(q,)),
                         lambda: capar.CAProcess(target=f, args=(q,)).start()):
                try:
                    make()
                    print("no error")
                except RuntimeError as exc:
                    print("explained" if "after `import capar`" in str(exc) else f"raw: {exc}")
    """))
    rc, out, err = _run(script, timeout=30)
    assert rc == 0, err
    assert out.split() == ["explained", "explained"], out


def _exit_on_one(x: int) -> int:
    if x == 1:
        os._exit(3)
    time.sleep(0.2)
    return x


def test_broken_pool_fails_imap_and_calls_error_callbacks():
    from concurrent.futures.process import BrokenProcessPool

    pool = CAPool(2)
    try:
        errors = []
        res = pool.apply_async(time.sleep, (30,), error_callback=errors.append)  # keeps one worker busy
        it = pool.imap(_exit_on_one, [0, 1, 2, 3])
        got = []
        while True:
            try:
                got.append(it.next(timeout=20))
            except StopIteration:
                break
            except BrokenProcessPool as exc:
                got.append(type(exc).__name__)
        # results before the crash, then the error once, then the end (not a wait for results never coming)
        assert got[-1] == "BrokenProcessPool" and got.count("BrokenProcessPool") == 1, got
        assert got[:-1] in ([], [0]), got
        with pytest.raises(BrokenProcessPool):
            res.get(timeout=20)
        assert len(errors) == 1 and isinstance(errors[0], BrokenProcessPool)
    finally:
        pool.terminate()
        pool.join()


def test_terminate_after_an_idle_worker_was_killed_does_not_hang():
    """A worker SIGKILLed while it waits for a task holds the task queue's lock for good."""
    import signal
    import threading
    from concurrent.futures.process import BrokenProcessPool

    pool = CAPool(1)
    try:
        assert pool.map(abs, [-1]) == [1]
        worker = pool._pool[0]
        time.sleep(0.2)  # idle: blocked reading the task queue, holding its lock
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        # forkserver reports a killed child as -9, or 255 when its status pipe closed first
        with pytest.raises(BrokenProcessPool, match=r"exited with code (-9|255)"):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the pool notices the death through the worker's sentinel
                pool.apply_async(abs, (1,)).get(timeout=10)
                time.sleep(0.05)
    finally:
        done = threading.Thread(target=pool.terminate, daemon=True)
        done.start()
        done.join(20)
    assert not done.is_alive(), "terminate() hung on the dead worker's lock"
    pool.join()
