"""Session fixtures: one loopback-only test IOC for the whole run, and a leftover-process check.

The ``ioc`` fixture is autouse so that its environment (``EPICS_CA_ADDR_LIST=127.0.0.1:PORT`` ...)
is in ``os.environ`` and its CA repeater is running before any test creates a CA context.
"""
from __future__ import annotations

import sys
from typing import Iterator

import psutil
import pytest

from capar.testing import IOC, db_all_types, db_counters, db_scalars, unique_prefix

N_SCALARS = 2000
N_COUNTERS = 20


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_children() -> Iterator[None]:
    """Fail the session if a child process of the test process is still alive at the end."""
    yield
    if "capar.parallel" in sys.modules:  # multiprocessing's own helpers, started by our pool tests
        sys.modules["capar.parallel"].shutdown_helpers()
    me = psutil.Process()
    left = me.children(recursive=True)
    if left:
        _, left = psutil.wait_procs(left, timeout=3.0)  # grace for children already exiting
    if left:
        lines = []
        for proc in left:
            try:
                lines.append(f"  pid {proc.pid}: {' '.join(proc.cmdline())}")
            except psutil.Error:
                lines.append(f"  pid {proc.pid}: (gone)")
        msg = "child processes left at the end of the test session:\n" + "\n".join(lines)
        print(msg)
        for proc in left:  # clean up what this session started, by pid
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, still = psutil.wait_procs(left, timeout=3.0)
        for proc in still:
            try:
                proc.kill()
            except psutil.Error:
                pass
        pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def ioc(_no_leftover_children: None) -> Iterator[IOC]:
    """The session's test IOC: ``db_all_types(P) + db_scalars(P, 2000) + db_counters(P, 20)``.

    Its client environment is applied to ``os.environ`` before any test runs.
    """
    P = unique_prefix()
    server = IOC(
        db_all_types(P) + db_scalars(P, N_SCALARS) + db_counters(P, N_COUNTERS),
        name="session", prefix=P,
    )
    server.start()
    try:
        server.apply_env()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefix(ioc: IOC) -> str:
    """PV name prefix of the session IOC's records (``ioc.prefix``)."""
    assert ioc.prefix is not None
    return ioc.prefix
