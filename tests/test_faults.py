"""Faults with a real IOC: the IOC killed during sharded reads and during waited puts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from capar import Coordinator
from capar.testing import IOC, db_scalars, unique_prefix


def _with_env(env):
    """Context manager: os.environ temporarily pointed at a private IOC (for new worker processes)."""
    class _Env:
        def __enter__(self):
            self.saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)

        def __exit__(self, *exc):
            for k, v in self.saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return _Env()


@pytest.mark.timeout(180)
def test_ioc_killed_during_sharded_get_then_restarted():
    P = unique_prefix("F")
    names = [P + f"s{i}" for i in range(2000)]
    with IOC(db_scalars(P, 2000), prefix=P, name="fault") as ioc:
        with _with_env(ioc.env):
            co = Coordinator(2)
        try:
            assert co.get(names).ok.all()
            killer = threading.Timer(0.05, ioc.process.kill)
            killer.start()
            t0 = time.monotonic()
            snaps = [co.get(names, timeout=1.0, connection_timeout=1.0) for _ in range(5)]
            killer.join()
            assert time.monotonic() - t0 < 5 * (2.0 + 2.0)  # each call keeps its deadline
            last = snaps[-1]
            assert not last.ok.any()  # the IOC is gone: every PV says so, nothing hangs
            assert set(last.error) <= {"not connected", "timeout", "disconnected"}
            ioc.restart()
            deadline = time.monotonic() + 60
            snap = co.get(names, timeout=2.0, connection_timeout=5.0)
            while not snap.ok.all() and time.monotonic() < deadline:
                snap = co.get(names, timeout=2.0, connection_timeout=5.0)
            assert snap.ok.all(), snap.failed[:3]  # same Coordinator, no new one needed
            assert snap.value.tolist() == [float(i) for i in range(2000)]
        finally:
            co.close()


def _dbf(ioc, field):
    """Value of a numeric field read inside the IOC (``dbgf``), e.g. ``1.0``."""
    out = ioc.dbgf(field)
    assert out.startswith("DBF_"), out
    return float(out.split(":", 1)[1])


CHILD = r"""
import json, sys, time, capar
names = sys.argv[1].split(",")
t0 = time.monotonic()
out = capar.caput_many(names, [1.0] * len(names), wait="all", connection_timeout=5.0, put_timeout=float(sys.argv[2]))
print(json.dumps({"status": out, "seconds": time.monotonic() - t0}), flush=True)
"""


@pytest.mark.timeout(120)
def test_ioc_killed_during_waited_caput_many():
    P = unique_prefix("F")
    # calcout records whose processing completes ODLY=3 s after a put: put-callbacks stay pending
    db = f'record(ao, "{P}sink") {{}}\n' + "".join(
        f'record(calcout, "{P}slow{i}") {{ field(CALC, "A") field(ODLY, "3") field(OOPT, "Every Time") '
        f'field(OUT, "{P}sink PP") }}\n' for i in range(50))
    names = [P + f"slow{i}.A" for i in range(50)]  # A is a process-passive field: the put waits for ODLY
    with IOC(db, prefix=P, name="fault-put") as ioc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        env.update(ioc.env)
        child = subprocess.Popen([sys.executable, "-c", CHILD, ",".join(names), "8"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # The fault must hit the child while its puts are pending: wait until the IOC's server holds the
            # child's 50 channels, every put has landed (A == 1.0) and none has completed (the ODLY outputs
            # still have to write 1.0 to sink).  A child that never connected fails here, not later.
            assert ioc.wait_client_channels(50, timeout=20.0) == 50, ioc.shell("casr 1")
            deadline = time.monotonic() + 20.0
            while True:
                landed = [_dbf(ioc, f"{P}slow{i}.A") for i in range(50)]
                if landed == [1.0] * 50 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert landed == [1.0] * 50, landed
            assert _dbf(ioc, f"{P}sink") == 0.0  # no put callback can have completed yet
            assert child.poll() is None  # the child is still waiting for them
            ioc.process.kill()
            out, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        res = json.loads(out.strip().splitlines()[-1])
        assert res["status"] == [-1] * 50  # every put reported as failed, none lost or hung
        assert res["seconds"] < 5.0 + 8.0 + 2.0
        assert "FATAL" not in err
