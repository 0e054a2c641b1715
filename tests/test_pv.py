"""PV objects and caget/caput/cainfo/camonitor with pyepics semantics."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

import capar
from capar import PV, caget, caput


def test_caget_every_type(prefix):
    assert caget(prefix + "ao") == 3.5
    assert caget(prefix + "longin") == -7
    assert caget(prefix + "stringin") == "world"
    assert caget(prefix + "mbbi") == 1
    assert caget(prefix + "mbbi", as_string=True) == "B"
    assert caget(prefix + "bo", as_string=True) == "On"
    assert caget(prefix + "ao", as_string=True) == "3.500"
    assert caget(prefix + "wf_text", as_string=True) == "Hello EPICS"
    assert caget(prefix + "wf_double").tolist() == [1, 2, 3, 4, 5]
    assert caget(prefix + "wf_double", count=3).tolist() == [1, 2, 3]
    assert list(caget(prefix + "wf_string")) == ["a", "bb", "ccc"]  # pyepics: numpy array of str
    assert caget(prefix + "int64in") == 2**40 + 1
    big = caget(prefix + "wf_big", timeout=10)
    assert isinstance(big, np.ndarray) and big.size == 200000


def test_caput_wait_roundtrip(prefix):
    assert caput(prefix + "s1600", 2.25, wait=True) == 1
    assert caget(prefix + "s1600", use_monitor=False) == 2.25
    assert caput(prefix + "mbbo", "One", wait=True) == 1
    assert caget(prefix + "mbbo", as_string=True, use_monitor=False) == "One"
    assert caput(prefix + "mbbo", 2, wait=True) == 1
    # a state name that does not exist: ValueError, as pyepics (whose ctypes buffer refuses the text)
    with pytest.raises(ValueError, match="'Nonexistent' is not a state of"):
        caput(prefix + "mbbo", "Nonexistent", wait=True)
    assert caput(prefix + "mbbo", "1", wait=True) == 1  # a number as text is an index
    assert caget(prefix + "mbbo", as_string=True, use_monitor=False) == "One"
    assert caput(prefix + "mbbo", 2, wait=True) == 1


def test_caget_dead_pv_returns_none_with_reason(caplog):
    caplog.set_level(logging.WARNING, logger="capar")
    t0 = time.monotonic()
    assert caget("capar:missing:pv", connection_timeout=0.5) is None
    assert time.monotonic() - t0 < 3
    assert "capar:missing:pv" in caplog.text
    assert caput("capar:missing:pv", 1, connection_timeout=0.2) is None


def test_caput_wrong_type_names_pv(prefix):
    with pytest.raises(capar.ca.CAError, match="longout"):
        caput(prefix + "longout", "not a number")


def test_pv_metadata_matches_db(prefix):
    p = PV(prefix + "ao")
    assert p.wait_for_connection(5)
    assert p.get() == 3.5
    assert p.units == "mm" and p.precision == 3
    assert p.upper_disp_limit == 10 and p.lower_ctrl_limit == -9
    assert p.severity == 0 and p.status == 0
    assert p.timestamp > 1e9
    assert p.count == 1 and p.nelm == 1 and p.type == "time_double"
    assert p.host and p.access == "read/write"
    assert "count=1" in repr(p)
    assert PV(prefix + "mbbo", form="ctrl").enum_strs == ("Zero", "One", "Two", "Three")
    alarm = PV(prefix + "calc_alarm")
    assert alarm.get() == 20.0 and alarm.severity == 2


def test_pv_forms(prefix):
    for form in ("native", "time", "ctrl"):
        p = PV(prefix + "longout", form=form)
        assert p.get(timeout=5) == 42
        md = p.get_with_metadata(use_monitor=False)
        if form == "ctrl":
            assert md["units"] == "cts"
        if form == "time":
            assert md["timestamp"] > 1e9


def test_pv_callbacks_and_monitor(prefix):
    p = PV(prefix + "counter", auto_monitor=True)
    got = []
    ev = threading.Event()

    def cb(pvname=None, value=None, cb_info=None, **kw):
        got.append(value)
        if len(got) >= 4:
            ev.set()

    idx = p.add_callback(cb)
    assert ev.wait(5)
    p.remove_callback(idx)
    n = len(got)
    time.sleep(0.35)
    assert len(got) == n, "callback still called after remove_callback"
    assert all(b - a == 1 for a, b in zip(got, got[1:4]))
    p.add_callback(cb)
    p.clear_callbacks()
    assert p.callbacks == {}


def test_pv_connection_callback(prefix):
    events = []
    p = PV(prefix + "s7", connection_callback=lambda pvname=None, conn=None, pv=None: events.append((pvname, conn)))
    assert p.wait_for_connection(5)
    deadline = time.monotonic() + 2
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (prefix + "s7", True) in events


def test_pv_put_complete_and_callback(prefix):
    p = PV(prefix + "s1601")
    assert p.wait_for_connection(5)
    done = []
    p.put(4.5, use_complete=True, callback=lambda pvname=None, **kw: done.append(pvname))
    deadline = time.monotonic() + 5
    while not p.put_complete and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.put_complete is True and done == [prefix + "s1601"]
    assert p.get(use_monitor=False) == 4.5


def test_get_pv_cache(prefix):
    a = capar.get_pv(prefix + "s8")
    b = capar.get_pv(prefix + "s8")
    assert a is b
    assert capar.get_pv(prefix + "s8", form="ctrl") is not a


def test_cainfo_text(prefix):
    text = capar.cainfo(prefix + "ao", print_out=False)
    assert prefix + "ao" in text and "units           = mm" in text


def test_camonitor_writes_lines(prefix):
    lines = []
    capar.camonitor(prefix + "counter", writer=lines.append)
    time.sleep(0.5)
    capar.camonitor_clear(prefix + "counter")
    n = len(lines)
    assert n >= 2 and prefix + "counter" in lines[0]
    time.sleep(0.3)
    assert len(lines) == n


@pytest.mark.parametrize("bad", [None, 12, ""])
def test_pv_bad_name(bad):
    with pytest.raises((TypeError, ValueError)):
        PV(bad)


def test_many_pvs_created_then_read_none_lost(prefix):
    """The seed's Method 1 at scale: connection events that beat channel registration are not lost."""
    names = [prefix + f"s{i}" for i in range(0, 1500)]
    pvs = [PV(n, auto_monitor=False, connection_timeout=10) for n in names]
    values = [p.get(timeout=10) for p in pvs]
    assert values == [float(i) for i in range(1500)]
