"""A fresh machine: no CA repeater runs until the first client's libca spawns capar's ``caRepeater``.

The session fixture runs a repeater on the session's repeater port, as a lab would.  These tests give
their clients a repeater port nobody listens on, so libca spawns ``caRepeater`` (capar's console
script) exactly as on a user's machine, with the client's stdout/stderr captured by pipes.  A repeater
that kept those pipes would make ``x=$(capar get PV)`` and ``capture_output=True`` wait forever.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from typing import Iterator

import psutil
import pytest

from capar.testing import free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX repeater detaching")

BIN = os.path.dirname(sys.executable)


def _repeaters_on(port: int, since: float) -> list[psutil.Process]:
    """caRepeater processes started since *since* that hold UDP *port*."""
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        try:
            if (proc.info["create_time"] or 0) < since - 1.0:
                continue
            if not any("caRepeater" in part for part in (proc.info["cmdline"] or ())):
                continue
            if any(c.laddr and c.laddr.port == port for c in proc.net_connections(kind="udp")):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _wait_repeaters(port: int, since: float, timeout: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        found = _repeaters_on(port, since)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def fresh_env(ioc) -> Iterator[dict]:
    """The session IOC's client environment with a repeater port no process listens on.

    Yields the environment plus ``_since``/``_port``; every caRepeater spawned on that port is killed
    by pid afterwards.
    """
    port = free_port()
    env = dict(os.environ)
    env.update(ioc.env)
    env["EPICS_CA_REPEATER_PORT"] = str(port)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    since = time.time()
    assert not _repeaters_on(port, since - 3600), "the fresh repeater port is already in use"
    try:
        yield {"env": env, "port": port, "since": since}
    finally:
        for proc in _repeaters_on(port, since):
            try:
                proc.kill()
                proc.wait(5)
            except psutil.Error:
                pass


def test_command_substitution_returns_and_the_spawned_repeater_serves_the_next_client(fresh_env, prefix):
    env, port, since = fresh_env["env"], fresh_env["port"], fresh_env["since"]
    pv = prefix + "ai"
    # exactly what a user types: the shell waits for EOF on the command's stdout
    res = subprocess.run(["bash", "-c", f'x=$(capar get {pv}); echo "got: $x"'], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["got:", pv, "1.25"], res.stdout

    reps = _wait_repeaters(port, since)
    assert len(reps) == 1, f"expected libca to spawn one caRepeater on UDP {port}, found {reps}"
    rep = reps[0]
    # detached: stdio on /dev/null, its own session, not in the client's directory
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{rep.pid}/fd/{fd}") == os.devnull
    assert os.getsid(rep.pid) == rep.pid != os.getsid(0)
    assert rep.cwd() == "/"
    # small: only the loader is imported (no numpy, no capar API modules)
    assert rep.memory_info().rss < 30 * 2**20, rep.memory_info()

    # a second client, output captured by subprocess.run, finds that repeater and spawns no other
    script = textwrap.dedent(f"""
        import capar
        print(repr(capar.caget({prefix + 'stringin'!r})), repr(capar.caget({pv!r})))
    """)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["'world'", "1.25"], res.stdout
    again = _repeaters_on(port, since)
    assert [p.pid for p in again] == [rep.pid], f"a second caRepeater was spawned: {again}"
    assert rep.is_running()


def test_script_with_captured_output_returns(fresh_env, prefix, tmp_path):
    """``subprocess.run([python, script], capture_output=True)`` of a pyepics-style script."""
    env = fresh_env["env"]
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import capar as epics
        pv = epics.PV({prefix + 'longin'!r})
        print(pv.get(timeout=5), epics.caget({prefix + 'ai'!r}))
    """))
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["-7", "1.25"], res.stdout
    assert len(_wait_repeaters(fresh_env["port"], fresh_env["since"])) == 1


def test_repeater_by_hand_in_foreground_keeps_stdio(tmp_path):
    """``caRepeater --foreground`` (a repeater run by hand) keeps its session and output."""
    port = free_port()
    env = dict(os.environ, EPICS_CA_REPEATER_PORT=str(port))
    since = time.time()
    log = tmp_path / "rep.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([os.path.join(BIN, "caRepeater"), "--foreground"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        reps = _wait_repeaters(port, since)
        assert [p.pid for p in reps] == [proc.pid]
        assert os.getsid(proc.pid) == os.getsid(0)
        assert os.readlink(f"/proc/{proc.pid}/fd/1") == str(log)
    finally:
        proc.kill()
        proc.wait(5)
