"""ophyd (v1) on capar: ``capar.ophyd.use_capar()`` against real servers.

In this process (capar's control layer, the session test IOC): ``EpicsSignal``, ``EpicsSignalRO``, a ``Device``
with components, callbacks on ophyd's dispatcher threads, release of the channels, and a bluesky
``RE(count(...))`` whose documents are checked.  In two child processes (ophyd picks one control layer per
process): the same ophyd script — signals, a device, an ``EpicsMotor`` on caproto's fake motor record server and
a bluesky ``scan`` — under ophyd's own pyepics control layer and under capar's, compared value by value.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from _diff import PRELUDE, assert_same
from capar.testing import MotorIOC

ophyd = pytest.importorskip("ophyd", reason="ophyd (the ophyd extra) is not installed")

import capar.ophyd  # noqa: E402

LAYER = capar.ophyd.use_capar()  # before any Signal is made (each binds ophyd.cl when it is created)

from ophyd import Component as Cpt  # noqa: E402
from ophyd import Device, EpicsSignal, EpicsSignalRO  # noqa: E402
from ophyd.utils.errors import ReadOnlyError  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def _wait(cond, timeout: float = 10.0) -> bool:
    """Poll *cond* until true or *timeout* seconds (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_use_capar_is_ophyds_control_layer() -> None:
    assert ophyd.cl is LAYER and ophyd.get_cl().name == "capar"
    assert capar.ophyd.use_capar() is not None and ophyd.cl.name == "capar"  # idempotent
    dispatcher = ophyd.cl.get_dispatcher()
    assert dispatcher is capar.ophyd.get_dispatcher() and dispatcher.is_alive()
    assert ophyd.cl.thread_class is capar.ca.CAThread


def test_epics_signal_put_get_set_and_callbacks(prefix: str) -> None:
    sig = EpicsSignal(prefix + "s1990", name="sig")
    sig.wait_for_connection(timeout=10)
    assert sig.cl is LAYER and isinstance(sig._read_pv, capar.ophyd.CaparShimPV)
    sig.put(12.5, use_complete=True)
    assert _wait(lambda: sig.get() == 12.5)
    assert sig.set(7.25).wait(timeout=10) is None
    assert sig.get() == 7.25 and sig.read()["sig"]["value"] == 7.25
    desc = sig.describe()["sig"]
    assert desc["source"] == f"PV:{prefix}s1990" and desc["dtype"] == "number" and desc["shape"] == []
    assert desc["units"] == "u" and desc["precision"] == 2
    seen: list[tuple[float, str]] = []
    sig.subscribe(lambda value=None, **kw: seen.append((value, threading.current_thread().name)))
    sig.put(3.0, wait=True)
    assert _wait(lambda: any(v == 3.0 and t == "monitor" for v, t in seen)), seen
    # every CA-driven callback ran on ophyd's dispatcher, none on libca's threads
    assert {t for _, t in seen} <= {"monitor", threading.current_thread().name}
    sig.destroy()


def test_epics_signal_ro_types(prefix: str) -> None:
    names = {"ai": 1.25, "longin": -7, "stringin": "world", "mbbi": 1, "bi": 0}
    sigs = {k: EpicsSignalRO(prefix + k, name=k) for k in names}
    as_text = EpicsSignalRO(prefix + "mbbi", name="mbbi_s", string=True)
    wave = EpicsSignalRO(prefix + "wf_double", name="wave")
    for s in (*sigs.values(), as_text, wave):
        s.wait_for_connection(timeout=10)
    for k, expected in names.items():
        assert sigs[k].get() == expected and sigs[k].read()[k]["value"] == expected
    assert as_text.get() == "B" and as_text.describe()["mbbi_s"]["dtype"] == "string"
    assert sigs["mbbi"].describe()["mbbi"]["enum_strs"] == ("A", "B", "C", "D")
    np.testing.assert_array_equal(wave.get(), [1.0, 2.0, 3.0, 4.0, 5.0])
    assert wave.describe()["wave"]["shape"] == [5]
    with pytest.raises(ReadOnlyError):
        sigs["ai"].put(1.0)
    missing = EpicsSignalRO(prefix + "no_such_record", name="missing")
    with pytest.raises(TimeoutError):
        missing.wait_for_connection(timeout=0.5)
    for s in (*sigs.values(), as_text, wave, missing):
        s.destroy()


class Stage(Device):
    setpoint = Cpt(EpicsSignal, "s1991")
    readback = Cpt(EpicsSignalRO, "s1991")
    gauge = Cpt(EpicsSignalRO, "ai")
    label = Cpt(EpicsSignalRO, "stringin", kind="config")


def test_device_with_components_and_release(prefix: str) -> None:
    dev = Stage(prefix, name="stage")
    dev.wait_for_connection(timeout=10)
    assert dev.connected
    dev.setpoint.set(4.5).wait(timeout=10)
    assert _wait(lambda: dev.readback.get() == 4.5)
    reading = dev.read()
    assert list(reading) == ["stage_setpoint", "stage_readback", "stage_gauge"]
    assert reading["stage_readback"]["value"] == 4.5 and reading["stage_gauge"]["value"] == 1.25
    assert dev.read_configuration()["stage_label"]["value"] == "world"
    assert dev.describe()["stage_gauge"]["units"] == "V"
    # one PV object per name: setpoint and readback share it
    pv = dev.setpoint._read_pv
    assert pv is dev.readback._read_pv and pv._reference_count == 3  # read + write PV of setpoint, readback
    chid = pv.chid
    dev.destroy()
    assert pv._reference_count == 0 and pv._cache_key not in capar.ophyd._state().cache
    with pytest.raises(capar.ca.CAError):
        capar.ca.channel_entry(chid)  # the last reference cleared the channel


def test_bluesky_count_documents(prefix: str) -> None:
    pytest.importorskip("bluesky", reason="bluesky (the ophyd extra) is not installed")
    from bluesky import RunEngine
    from bluesky.plans import count

    det = EpicsSignalRO(prefix + "ai", name="det")
    dev = Stage(prefix, name="stage")
    dev.setpoint.put(2.5, wait=True)
    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(count([det, dev], num=3))
    assert [n for n, _ in docs] == ["start", "descriptor", "event", "event", "event", "stop"]
    start, desc, stop = docs[0][1], docs[1][1], docs[-1][1]
    assert start["uid"] == uid and start["detectors"] == ["det", "stage"]
    assert stop["exit_status"] == "success" and stop["num_events"] == {"primary": 3}
    keys = desc["data_keys"]
    assert set(keys) == {"det", "stage_setpoint", "stage_readback", "stage_gauge"}
    assert keys["det"]["source"] == f"PV:{prefix}ai" and keys["det"]["units"] == "V"
    assert desc["configuration"]["stage"]["data"]["stage_label"] == "world"
    for _, ev in docs[2:5]:
        assert ev["data"] == {"det": 1.25, "stage_setpoint": 2.5, "stage_readback": 2.5, "stage_gauge": 1.25}
        assert all(ts > 1e9 for ts in ev["timestamps"].values())
    assert [ev["seq_num"] for _, ev in docs[2:5]] == [1, 2, 3]
    det.destroy()
    dev.destroy()


# -- the same ophyd script under ophyd's pyepics layer and under capar's -----------------------------------

SCRIPT = r'''
import sys, threading, time
layer, P, M, SP = sys.argv[1:5]
if layer == "capar":
    import capar.ophyd
    capar.ophyd.use_capar()
import ophyd
from ophyd import Component as Cpt, Device, EpicsMotor, EpicsSignal, EpicsSignalRO
from bluesky import RunEngine
from bluesky.plans import scan

def r6(x):
    return round(float(x), 6)

def plain(reading):
    return {k: v["value"] for k, v in reading.items()}

out = {"layer": ophyd.cl.name}
ro = {n: EpicsSignalRO(P + n, name=n) for n in ("ai", "longin", "stringin", "mbbi", "bi", "wf_double",
                                                 "wf_long", "wf_char", "wf_string", "calc_alarm")}
txt = EpicsSignalRO(P + "mbbi", name="mbbi_s", string=True)
for s in (*ro.values(), txt):
    s.wait_for_connection(timeout=10)
out["read"] = {k: plain(s.read()) for k, s in ro.items()}
out["describe"] = {k: s.describe() for k, s in ro.items()}
out["string"] = [txt.get(), txt.describe()]
out["alarm"] = [ro["calc_alarm"].alarm_severity, ro["calc_alarm"].alarm_status]

sig = EpicsSignal(P + SP, name="sp")
sig.wait_for_connection(timeout=10)
seen = []
sig.subscribe(lambda value=None, **kw: seen.append([value, threading.current_thread().name]))
st = sig.set(8.5)
st.wait(10)
sig.put(9.5, wait=True)
t0 = time.monotonic()
while [9.5, "monitor"] not in seen and time.monotonic() - t0 < 10:
    time.sleep(0.01)
sp_desc = sig.describe()
sp_desc["sp"]["source"] = sp_desc["sp"]["source"].replace(SP, "SP")
out["signal"] = [st.success, st.done, sig.get(), sig.limits, sp_desc, [9.5, "monitor"] in seen]

m = EpicsMotor(M, name="m")
m.wait_for_connection(timeout=10)
m.move(1.0, wait=True)
st = m.move(1.5, wait=True)
out["motor"] = [st.success, st.done, r6(m.position), r6(m.user_readback.get()), m.moving, m.egu,
                [r6(x) for x in m.limits], list(m.read()), list(m.read_configuration()),
                sorted(m.describe()), m.describe()["m"]["units"], m.describe()["m"]["source"][:3]]

RE = RunEngine({})
docs = []
RE.subscribe(lambda name, doc: docs.append((name, doc)))
det = EpicsSignalRO(P + "ai", name="det")
RE(scan([det], m, 1.0, 1.4, 3))
events = [d for n, d in docs if n == "event"]
desc = [d for n, d in docs if n == "descriptor"][0]
out["scan"] = [[n for n, _ in docs], [[r6(e["data"]["m"]), e["data"]["det"], e["seq_num"]] for e in events],
               {k: sorted(v) for k, v in desc["data_keys"].items()}, desc["data_keys"]["det"],
               docs[-1][1]["exit_status"], docs[-1][1]["num_events"]]
emit(out)
'''


def _run_layer(layer: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    full = dict(os.environ)
    full.pop("PYTHONPATH", None)  # never the capar.compat `epics` shim: the pyepics side needs pyepics
    full.update(env)
    full["OPHYD_CONTROL_LAYER"] = "pyepics" if layer == "pyepics" else "dummy"
    return subprocess.Popen([sys.executable, "-c", PRELUDE + SCRIPT, layer, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full)


def _result(proc: subprocess.Popen, layer: str, timeout: float = 60.0) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{layer} side did not finish in {timeout} s:\n{out}\n{err[-3000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{layer} side failed:\n{out}\n{err[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def motors(ioc):
    pytest.importorskip("caproto", reason="caproto (the test extra) serves the motor record")
    with MotorIOC(repeater_port=ioc.repeater_port) as server:
        yield server, server.client_env(ioc.env)


def test_same_readings_as_ophyds_pyepics_layer(prefix: str, motors) -> None:
    pytest.importorskip("epics", reason="pyepics (the test extra) is the oracle")
    pytest.importorskip("bluesky", reason="bluesky (the ophyd extra) is not installed")
    server, env = motors
    # one motor and one setpoint PV per side: the two sides run at the same time
    sides = {layer: _run_layer(layer, [prefix, server.motors[k], f"s{1992 + k}"], env)
             for k, layer in enumerate(("pyepics", "capar"))}
    results = {layer: _result(proc, layer) for layer, proc in sides.items()}
    ref, got = results["pyepics"], results["capar"]
    assert ref.pop("layer") == "pyepics" and got.pop("layer") == "capar"
    # both motors end where they were sent, with the same fields, readings and description
    assert ref["motor"][:5] == got["motor"][:5] == [True, True, 1.5, 1.5, False]
    assert ref["scan"][1] == got["scan"][1] and ref["scan"][0][0] == "start"
    assert_same(ref, got)
