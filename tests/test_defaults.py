"""libca's defaults, as a capar client meets them on a machine where no EPICS_* variable is set.

Each test runs a client in a subprocess whose environment holds no EPICS_* variable except the session
IOC's address (``EPICS_CA_ADDR_LIST=127.0.0.1:PORT``, ``EPICS_CA_AUTO_ADDR_LIST=NO``: everything stays on
loopback), so libca's compiled-in defaults apply: ``EPICS_CA_REPEATER_PORT`` 5065,
``EPICS_CA_MAX_ARRAY_BYTES`` 16384 and ``EPICS_CA_AUTO_ARRAY_BYTES`` YES (the client then sizes its buffers
itself and 16384 limits nothing) -- and capar's own default, ``EPICS_CA_MAX_ARRAY_BYTES`` =
``capar.ca.context.DEFAULT_MAX_ARRAY_BYTES`` when the variable is unset.

The default repeater port is the machine-wide 5065: when nothing listens there, libca forks and execs a
``caRepeater`` (capar's console script, found beside the interpreter).  The ``spawned_repeaters``
fixture stops, by pid, every caRepeater a client of this module caused, and never one that was
running before.  Clients write stdout/stderr to files, not pipes: a spawned caRepeater may inherit them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Iterator

import psutil
import pytest

from capar.ca.context import DEFAULT_MAX_ARRAY_BYTES
from capar.testing import stop_processes

pytestmark = pytest.mark.timeout(120)

DEFAULT_REPEATER_PORT = 5065

# The client.  argv: prefix, timeout (s) for the large-array reads.  Prints one JSON line.
CLIENT = r"""
import ctypes, json, logging, os, sys, time

env_before = sorted(k for k in os.environ if k.startswith("EPICS_"))
messages = []


class Keep(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())


logging.getLogger("capar").addHandler(Keep())
logging.getLogger("capar").setLevel(logging.DEBUG)  # libca's own messages: 'capar.ca' at DEBUG

import psutil
import capar
from epicscorelibs.path import get_lib

P, big_timeout = sys.argv[1], float(sys.argv[2])
REPEATER_PORT = 5065
out = {"env_before": env_before}


def listeners(port):
    return [c.pid for c in psutil.net_connections("udp") if c.laddr and c.laddr.port == port]


def is_repeater(proc):
    try:
        return any(os.path.basename(part) == "caRepeater" for part in proc.cmdline())
    except psutil.Error:
        return False


# -- reads --------------------------------------------------------------------------------------------
small = capar.caget(P + "wf_double", timeout=5.0)
out["small"] = None if small is None else [float(x) for x in small]
out["text"] = capar.caget(P + "wf_text", as_string=True, timeout=5.0)
t0 = time.monotonic()
big = capar.caget(P + "wf_big", timeout=big_timeout)
out["big_seconds"] = time.monotonic() - t0
out["big"] = None if big is None else {"len": len(big), "nonzero": int((big != 0).sum()),
                                       "dtype": str(big.dtype)}
t0 = time.monotonic()
snap = capar.acquire([P + "wf_double", P + "wf_big", P + "ao", P + "longin"], timeout=big_timeout)
out["acquire_seconds"] = time.monotonic() - t0
out["acquire_ok"] = snap.ok.tolist()
out["acquire_error"] = [None if e is None else str(e) for e in snap.error]
out["acquire_big_len"] = None if snap.values[1] is None else len(snap.values[1])
out["acquire_scalars"] = [snap.values[2], snap.values[3]]
out["ao_after"] = capar.caget(P + "ao", timeout=5.0)  # the circuit still serves after the big reads
out["messages"] = messages

# -- libca's settings: the variable if set, else its compiled-in default ------------------------------
com = ctypes.CDLL(get_lib("Com"))


class ENV_PARAM(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("pdflt", ctypes.c_char_p)]


com.envGetConfigParamPtr.restype = ctypes.c_char_p
com.envGetConfigParamPtr.argtypes = [ctypes.POINTER(ENV_PARAM)]
out["config"], out["compiled"] = {}, {}
for name in ("EPICS_CA_REPEATER_PORT", "EPICS_CA_MAX_ARRAY_BYTES", "EPICS_CA_AUTO_ARRAY_BYTES"):
    param = ENV_PARAM.in_dll(com, name)
    out["config"][name] = com.envGetConfigParamPtr(ctypes.byref(param)).decode()
    out["compiled"][name] = param.pdflt.decode()
out["env_after"] = {k: v for k, v in os.environ.items() if k.startswith("EPICS_")}

# -- the repeater on the default port: wait until something holds it; which of our children is one ---
deadline = time.monotonic() + 10.0
while not listeners(REPEATER_PORT) and time.monotonic() < deadline:
    time.sleep(0.05)
out["listening"] = bool(listeners(REPEATER_PORT))
out["children"] = [p.pid for p in psutil.Process().children() if is_repeater(p)]
print(json.dumps(out), flush=True)
"""


def _is_repeater(proc: psutil.Process) -> bool:
    try:
        return any(os.path.basename(part) == "caRepeater" for part in proc.cmdline())
    except psutil.Error:
        return False


def _udp_ports(proc: psutil.Process) -> set[int]:
    try:
        return {c.laddr.port for c in proc.net_connections("udp") if c.laddr}
    except psutil.Error:
        return set()


def _port_listeners(port: int) -> set[int | None]:
    return {c.pid for c in psutil.net_connections("udp") if c.laddr and c.laddr.port == port}


class RepeaterGuard:
    """What held the default repeater port before this module ran, and the caRepeaters it caused."""

    def __init__(self) -> None:
        self.since = time.time()
        self.before = {p.pid for p in psutil.process_iter() if _is_repeater(p)}
        self.port_was_free = not _port_listeners(DEFAULT_REPEATER_PORT)
        self.reported: set[int] = set()  # caRepeaters our clients saw as their own children

    def ours(self) -> list[psutil.Process]:
        """caRepeater processes created after the module started, not running before, holding UDP 5065
        (or reported by one of our clients as its child)."""
        found = []
        for proc in psutil.process_iter():
            if proc.pid in self.before or not _is_repeater(proc):
                continue
            try:
                if proc.create_time() < self.since - 0.5:
                    continue
            except psutil.Error:
                continue
            if DEFAULT_REPEATER_PORT in _udp_ports(proc) or proc.pid in self.reported:
                found.append(proc)
        return found

    def stop(self) -> list[int]:
        procs = self.ours()
        stop_processes(procs)
        return [p.pid for p in procs]


@pytest.fixture(scope="module")
def spawned_repeaters() -> Iterator[RepeaterGuard]:
    guard = RepeaterGuard()
    try:
        yield guard
    finally:
        guard.stop()
        left = [p.pid for p in guard.ours()]
        assert not left, f"caRepeater spawned by this module still running: {left}"


def run_client(ioc, tmp_path, guard: RepeaterGuard, big_timeout: float, extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    env["EPICS_CA_ADDR_LIST"] = f"127.0.0.1:{ioc.port}"
    env["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    env.update(extra or {})
    out_path, err_path = tmp_path / "client.out", tmp_path / "client.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, ioc.prefix, str(big_timeout)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err_path.read_text(errors="replace")
    assert proc.returncode == 0, stderr[-3000:]
    res = json.loads(out_path.read_text().strip().splitlines()[-1])
    guard.reported.update(res["children"])
    res["stderr"] = stderr
    return res


def check_default_repeater(res: dict, guard: RepeaterGuard) -> None:
    """libca used the default repeater port: it holds 5065, spawned there by our client if it was free."""
    assert res["config"]["EPICS_CA_REPEATER_PORT"] == "5065"
    assert res["listening"], "nothing listens on UDP 5065 after a client with the default repeater port ran"
    if guard.port_was_free:
        ours = guard.ours()
        assert ours, "UDP 5065 was free, yet no caRepeater of ours holds it"
        holders = [p for p in ours if DEFAULT_REPEATER_PORT in _udp_ports(p)]
        assert len(holders) == 1, [(p.pid, p.cmdline()) for p in ours]
        assert _udp_ports(holders[0]) == {DEFAULT_REPEATER_PORT}
        assert set(res["children"]) <= {p.pid for p in ours}
    else:
        assert res["children"] == [], "libca spawned a caRepeater although one held UDP 5065"


def test_defaults_read_small_and_large_arrays(ioc, tmp_path, spawned_repeaters):
    """No EPICS_* variable but the address: capar raises the array limit to its own default and a 1.6 MB
    waveform (200,000 doubles, 100x libca's 16384-byte default) reads complete; scalars, a small waveform
    and a char-waveform string read their values; libca spawns/uses a repeater on UDP 5065."""
    res = run_client(ioc, tmp_path, spawned_repeaters, big_timeout=10.0)
    assert res["env_before"] == ["EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST"]
    assert res["compiled"] == {"EPICS_CA_REPEATER_PORT": "5065", "EPICS_CA_MAX_ARRAY_BYTES": "16384",
                               "EPICS_CA_AUTO_ARRAY_BYTES": "YES"}
    # capar sets EPICS_CA_MAX_ARRAY_BYTES before libca loads (only because it was unset), nothing else
    assert res["env_after"] == {"EPICS_CA_ADDR_LIST": f"127.0.0.1:{ioc.port}", "EPICS_CA_AUTO_ADDR_LIST": "NO",
                                "EPICS_CA_MAX_ARRAY_BYTES": str(DEFAULT_MAX_ARRAY_BYTES)}
    assert res["config"]["EPICS_CA_MAX_ARRAY_BYTES"] == str(DEFAULT_MAX_ARRAY_BYTES)
    assert res["config"]["EPICS_CA_AUTO_ARRAY_BYTES"] == "YES"
    assert res["small"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert res["text"] == "Hello EPICS"
    assert res["big"] == {"len": 200000, "nonzero": 0, "dtype": "float64"}
    assert res["acquire_ok"] == [True, True, True, True], res["acquire_error"]
    assert res["acquire_big_len"] == 200000
    assert res["acquire_scalars"] == [3.5, -7]
    assert res["ao_after"] == 3.5
    assert "CAC:" not in res["stderr"], res["stderr"][-2000:]
    check_default_repeater(res, spawned_repeaters)


def test_libca_array_limit_fails_the_large_pv_only(ioc, tmp_path, spawned_repeaters):
    """libca's own 16384-byte limit in force (EPICS_CA_AUTO_ARRAY_BYTES=NO, EPICS_CA_MAX_ARRAY_BYTES=16384,
    the only variables added to the address): the small waveform still reads; the 1.6 MB one is dropped by
    libca ('not enough memory for message body cache' on stderr), and capar reports it for that PV alone,
    within its timeout (caget: None with a logged 'timed out'; acquire: error 'timeout'), never a hang."""
    limit = {"EPICS_CA_AUTO_ARRAY_BYTES": "NO", "EPICS_CA_MAX_ARRAY_BYTES": "16384"}
    big_timeout = 1.0
    res = run_client(ioc, tmp_path, spawned_repeaters, big_timeout=big_timeout, extra=limit)
    assert res["env_before"] == sorted(["EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST", *limit])
    assert res["config"]["EPICS_CA_MAX_ARRAY_BYTES"] == "16384"  # capar keeps the user's setting
    assert res["config"]["EPICS_CA_AUTO_ARRAY_BYTES"] == "NO"
    assert res["small"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert res["text"] == "Hello EPICS"
    assert res["big"] is None
    assert big_timeout * 0.9 <= res["big_seconds"] < big_timeout + 2.0
    assert any(f"{ioc.prefix}wf_big" in m and "timed out" in m for m in res["messages"]), res["messages"]
    assert res["acquire_ok"] == [True, False, True, True], res["acquire_error"]
    assert res["acquire_error"] == [None, "timeout", None, None]
    assert res["acquire_seconds"] < big_timeout + 2.0
    assert res["acquire_scalars"] == [3.5, -7]
    assert res["ao_after"] == 3.5
    # libca says why, off the terminal as in pyepics (WITH_CA_MESSAGES = False), in the 'capar.ca' log
    assert any("not enough memory for message body cache" in m for m in res["messages"]), res["messages"]
    assert "not enough memory for message body cache" not in res["stderr"], res["stderr"][-2000:]
    check_default_repeater(res, spawned_repeaters)
