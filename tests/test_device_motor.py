"""``Device``, ``Motor`` and ``Alarm`` against pyepics, the oracle: the same script runs under pyepics and under
capar (``python -m capar.compat``) and the results are compared value by value.

The motor is a real motor-record server: caproto's fake motor record IOC (:class:`capar.testing.MotorIOC`),
on loopback next to the session test IOC.
"""
from __future__ import annotations

import pytest

from _diff import assert_same, run_both
from capar.testing import MotorIOC

pytest.importorskip("epics", reason="pyepics (the test extra) is the oracle")
pytest.importorskip("caproto", reason="caproto (the test extra) serves the motor record")


@pytest.fixture(scope="module")
def motors(ioc):
    with MotorIOC(repeater_port=ioc.repeater_port) as server:
        yield server, server.client_env(ioc.env)


MOTOR = r'''
import sys, time
import epics
from epics import Motor
from epics.motor import MotorException, MotorLimitException

name, not_a_motor = sys.argv[1], sys.argv[2]
out = {}
m = Motor(name)
m.move(1.0, wait=True)                         # the same start for both sides
t0 = time.time()
while abs(m.get_position(readback=True) - 1.0) > 1e-9 and time.time() - t0 < 10:
    time.sleep(0.05)
time.sleep(0.3)
out["repr"] = [repr(m), str(m)]
out["position"] = [round(m.get_position(), 6), round(m.get_position(readback=True), 6),
                   round(m.get_position(dial=True, readback=True), 6)]
out["fields"] = [m.VELO, m.slew_speed, m.PREC, m.precision, m.HLM, m.LLM, m.high_limit, m.low_limit, m.DESC,
                 m.RTYP, m.DMOV, m.done_moving]
out["within"] = [m.within_limits(5), m.within_limits(50), m.within_limits(-1), m.within_limits(10)]
out["refused"] = [m.move([1]), m.move(None), m.move(50), m.move(-5), m.move(12, relative=True)]
events = []
m.set_callback("RBV", lambda **kw: events.append([kw["motor_field"], kw["pvname"]]))
out["move_relative"] = m.move(0.5, relative=True)
time.sleep(1.2)
out["after_move"] = [round(m.get_position(), 6), round(m.get_position(readback=True), 6)]
m.clear_callback("RBV")
out["events"] = sorted(set(map(tuple, events)))
m.TWV = 0.25
time.sleep(0.3)
out["twv"] = [m.TWV, m.tweak_val]
out["tweak"] = m.tweak("reverse")
time.sleep(0.8)
out["after_tweak"] = round(m.get_position(readback=True), 6)
out["move_wait"] = m.move(1.0, wait=True)
time.sleep(0.8)
m.move(6.0)
time.sleep(0.4)
m.stop()
time.sleep(0.6)
out["stopped_early"] = m.get_position(readback=True) < 5.0
out["info_keys"] = sorted(m.get_info())
out["steps"] = m.make_step_list(minstep=0.001, maxstep=1.0)
out["pv"] = [m.get_pv("VAL").pvname, m.PV("RBV").pvname]
for label, call in (("not_a_motor", lambda: Motor(not_a_motor)), ("no_name", lambda: Motor()),
                    ("no_field", lambda: m.no_such_field), ("text", lambda: m.move("abc")),
                    ("check_limits", m.check_limits)):
    try:
        call()
        out[label] = None
    except Exception as exc:
        out[label] = [type(exc).__name__, str(exc)]
out["limit_exception"] = [issubclass(MotorLimitException, Exception), str(MotorLimitException("x"))]
emit(out)
'''


def test_motor_matches_pyepics(motors, prefix):
    server, env = motors
    py, cp = run_both(MOTOR, [server.motors[0], prefix + "ao"], env=env, timeout=120)
    # a move not waited for returns 1 once MOVN is seen, else 0 or 4 (LVIO): a race, in pyepics as well
    assert py.pop("move_relative") in (0, 1, 4) and cp.pop("move_relative") in (0, 1, 4)
    assert_same(py, cp)
    assert cp["fields"][:2] == [1.0, 1.0] and cp["fields"][9] == "motor"
    assert cp["refused"][:4] == [-13, -13, -12, -12]
    assert cp["after_move"][1] == pytest.approx(1.5)
    assert cp["events"] and cp["events"][0][0] == "RBV"
    assert cp["not_a_motor"][0] == "MotorException" and "not an Epics Motor" in cp["not_a_motor"][1]
    assert cp["stopped_early"] is True


DEVICE = r'''
import os, sys, tempfile, time
import epics
P = sys.argv[1]
out = {}
d = epics.Device(P, attrs=("ao", "longout", "stringout", "mbbo"), aliases={"drive": "ao", "text": "stringout"})
out["repr"] = repr(d)
out["reads"] = [d.ao, d.drive, d.text, d.longout, d.get("mbbo", as_string=True), d.get("mbbo"), d.stringin,
                d.get("wf_long")]  # (a get with count= races the first monitor event for the cached value)
out["pvnames"] = sorted(pv.pvname for pv in d._pvs.values())
out["put"] = d.put("s1990", 12.5, wait=True)
out["after_put"] = d.get("s1990")
d.s1991 = 7
time.sleep(0.3)
out["setattr"] = d.s1991
state = d.save_state()
out["state"] = {k: state[k] for k in sorted(state) if not k.startswith("counter")}
fd, path = tempfile.mkstemp(suffix=".state")
os.close(fd)
d.write_state(path)
with open(path) as fh:
    lines = fh.read().splitlines()
out["file"] = [lines[0].split(",time=")[0]] + lines[1:]
d.s1991 = 1991
time.sleep(0.3)
out["read_state"] = d.read_state(path, restore=True)
time.sleep(0.3)
out["restored"] = d.s1991
os.unlink(path)
seen = []
idx = d.add_callback("counter", lambda pvname=None, value=None, **kw: seen.append(pvname))
time.sleep(0.5)
d.remove_callbacks("counter", index=idx)
out["callback"] = [sorted(set(seen)), idx]
d.put("s1990", 1990.0, wait=True)
d.put("s1991", 1991.0, wait=True)
fixed = epics.Device(P, attrs=("ao",), mutable=False)
try:
    fixed.nothere
    out["immutable"] = None
except AttributeError as exc:
    out["immutable"] = ["AttributeError", str(exc)]
out["dir"] = [a for a in ("drive", "ao", "text", "PV", "save_state") if a in dir(d)]
emit(out)
'''


def test_device_matches_pyepics(prefix):
    py, cp = run_both(DEVICE, [prefix])
    assert_same(py, cp)
    assert cp["reads"][:2] == [3.5, 3.5] and cp["after_put"] == 12.5 and cp["restored"] == 7


ALARM = r'''
import sys, time
import epics
P = sys.argv[1]
out = {}
name = P + "s1992"
hits = []
def cb(pvname=None, value=None, char_value=None, trip_point=None, comparison=None, **kw):
    hits.append([pvname, value, trip_point, comparison])  # (char_value depends on whether PREC was read yet)
a = epics.Alarm(name, comparison="gt", trip_point=5000, callback=cb, alert_delay=0)
out["repr"] = repr(a)
for v in (6000, 1992, 7000, 8000, 1992):
    epics.caput(name, v, wait=True)
    time.sleep(0.3)
out["hits"] = hits
quiet = []
b = epics.Alarm(name, comparison=">=", trip_point=100, callback=lambda **kw: quiet.append(kw["value"]),
                alert_delay=60)
for v in (50, 150, 50, 150):
    epics.caput(name, v, wait=True)
    time.sleep(0.3)
out["delayed"] = quiet
epics.caput(name, 1992.0, wait=True)
try:
    epics.Alarm(name)
    out["missing"] = None
except UserWarning as exc:
    out["missing"] = ["UserWarning", str(exc)]
emit(out)
'''


def test_alarm_matches_pyepics(prefix):
    py, cp = run_both(ALARM, [prefix])
    assert_same(py, cp)
    assert [h[1] for h in cp["hits"]] == [6000.0, 7000.0]
    assert cp["delayed"] == [150.0]
