"""Session fixtures: one loopback-only test IOC for the whole run, and a leftover-process check.

The ``ioc`` fixture is autouse so that its environment (``EPICS_CA_ADDR_LIST=127.0.0.1:PORT`` ...)
is in ``os.environ`` and its CA repeater is running before any test creates a CA context.
"""
from __future__ import annotations

import sys
import time
from typing import Iterator

import psutil
import pytest

from capar.testing import IOC, db_all_types, db_counters, db_scalars, stop_processes, unique_prefix

N_SCALARS = 2000
N_COUNTERS = 20


def _orphan_repeaters(since: float, known: set[int]) -> list[psutil.Process]:
    """caRepeater processes started since *since* whose parent is gone.

    libca spawns a detached caRepeater when a client starts without one on its repeater port (e.g. a
    worker that outlived the test IOC); it is re-parented to init and no children() check sees it.
    """
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "create_time"]):
        info = proc.info
        if (info["pid"] not in known and info["ppid"] == 1 and (info["create_time"] or 0) >= since
                and any("caRepeater" in part for part in (info["cmdline"] or ()))):
            found.append(proc)
    return found


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_children() -> Iterator[None]:
    """Fail the session if a child process of the test process — or a caRepeater that libca spawned
    for one of them — is still alive at the end."""
    since = time.time() - 1.0
    known = {p.pid for p in psutil.process_iter()}
    yield
    problems = []
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
        problems.append("child processes left at the end of the test session:\n" + "\n".join(lines))
        stop_processes(left)  # clean up what this session started, by pid
    orphans = _orphan_repeaters(since, known)
    for proc in orphans:  # spawned for a process of this session: stop it by pid
        try:
            proc.kill()
        except psutil.Error:
            pass
    if orphans:
        problems.append(f"caRepeater spawned by libca and left behind: pids {[p.pid for p in orphans]}")
    if problems:
        print("\n".join(problems))
        pytest.fail("\n".join(problems), pytrace=False)


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
