"""pyepics ``ca`` surface against the real test IOC."""
from __future__ import annotations

import ctypes
import logging
import threading
import time

import numpy as np
import pytest

from capar import ca
from capar.ca import dbr

NATIVE = {
    "ao": dbr.DOUBLE, "ai": dbr.DOUBLE, "bo": dbr.ENUM, "bi": dbr.ENUM, "mbbo": dbr.ENUM, "mbbi": dbr.ENUM,
    "longout": dbr.LONG, "longin": dbr.LONG, "stringout": dbr.STRING, "stringin": dbr.STRING,
    "lsi": dbr.STRING, "int64in": dbr.DOUBLE, "wf_char": dbr.CHAR, "wf_uchar": dbr.CHAR,
    "wf_short": dbr.SHORT, "wf_ushort": dbr.LONG, "wf_long": dbr.LONG, "wf_ulong": dbr.DOUBLE,
    "wf_float": dbr.FLOAT, "wf_double": dbr.DOUBLE, "wf_string": dbr.STRING, "counter": dbr.DOUBLE,
}
EXPECTED = {
    "ao": 3.5, "ai": 1.25, "bo": 1, "bi": 0, "mbbo": 2, "mbbi": 1, "longout": 42, "longin": -7,
    "stringout": "hello", "stringin": "world", "int64in": float(2**40 + 1), "int64out": float(-(2**33)),
    "lsi": "L" * 39,
}


def chan(name):
    c = ca.create_channel(name, connect=True)
    assert ca.isConnected(c), name
    return c


@pytest.mark.parametrize("rec,ftype", sorted(NATIVE.items()))
def test_field_types(prefix, rec, ftype):
    c = chan(prefix + rec)
    assert ca.field_type(c) == ftype
    assert ca.name(c) == prefix + rec
    assert ca.state(c) == dbr.CS_CONN
    assert ca.access(c) == "read/write"
    assert ca.read_access(c) == 1 and ca.write_access(c) == 1
    assert ca.host_name(c).endswith(":" + str(__import__("os").environ["EPICS_CA_SERVER_PORT"]))


@pytest.mark.parametrize("rec,value", sorted(EXPECTED.items()))
def test_get_scalars(prefix, rec, value):
    assert ca.get(chan(prefix + rec)) == value


@pytest.mark.parametrize("ftvl", ["char", "uchar", "short", "ushort", "long", "ulong", "int64", "uint64",
                                  "float", "double"])
def test_get_numeric_waveforms(prefix, ftvl):
    c = chan(prefix + "wf_" + ftvl)
    assert ca.element_count(c) == 16
    v = ca.get(c)
    assert isinstance(v, np.ndarray)
    assert v.tolist() == [1, 2, 3, 4, 5]
    assert ca.get(c, count=2).tolist() == [1, 2]
    cval = ca.get(c, as_numpy=False)  # pyepics: a ctypes array (its own test_Array0 checks the type)
    assert isinstance(cval, ctypes.Array) and list(cval) == [1, 2, 3, 4, 5]


def test_get_string_and_char_waveforms(prefix):
    assert ca.get(chan(prefix + "wf_string")) == ["a", "bb", "ccc"]
    c = chan(prefix + "wf_text")
    assert ca.get(c, as_string=True) == "Hello EPICS"
    assert bytes(ca.get(c)[:5]) == b"Hello"
    assert ca.get(chan(prefix + "lsi.VAL$"), as_string=True) == "L" * 100


def test_get_empty_and_big_waveform(prefix):
    e = ca.get(chan(prefix + "wf_empty"))
    assert isinstance(e, np.ndarray) and e.size == 0
    big = ca.get(chan(prefix + "wf_big"), timeout=10)
    assert big.shape == (200000,) and big.dtype == np.float64


def test_enum_as_string(prefix):
    assert ca.get(chan(prefix + "mbbo"), as_string=True) == "Two"
    assert ca.get(chan(prefix + "bi"), as_string=True) == "Closed"
    assert ca.get_enum_strings(chan(prefix + "mbbi")) == ("A", "B", "C", "D")


def test_ctrlvars_match_db(prefix):
    md = ca.get_ctrlvars(chan(prefix + "ao"))
    assert md["units"] == "mm" and md["precision"] == 3
    assert (md["upper_disp_limit"], md["lower_disp_limit"]) == (10, -10)
    assert (md["upper_ctrl_limit"], md["lower_ctrl_limit"]) == (9, -9)
    assert (md["upper_alarm_limit"], md["upper_warning_limit"]) == (8, 6)
    assert (md["lower_warning_limit"], md["lower_alarm_limit"]) == (-6, -8)
    lo = ca.get_ctrlvars(chan(prefix + "longout"))
    assert lo["units"] == "cts" and (lo["upper_disp_limit"], lo["lower_disp_limit"]) == (1000, -1000)
    assert ca.get_precision(chan(prefix + "ai")) == 2


def test_timevars_and_severity(prefix):
    tv = ca.get_timevars(chan(prefix + "calc_alarm"))
    assert tv["severity"] == 2 and tv["status"] != 0
    assert abs(tv["timestamp"] - time.time()) < 3600 * 24
    md = ca.get_with_metadata(chan(prefix + "ao"), ftype=dbr.TIME_DOUBLE)
    assert md["value"] == 3.5 and md["severity"] == 0 and md["timestamp"] > 1e9


def test_get_wait_false_then_get_complete(prefix):
    chids = [chan(prefix + f"s{i}") for i in range(10, 20)]
    for c in chids:
        assert ca.get(c, wait=False) is None
    ca.poll()
    assert [ca.get_complete(c) for c in chids] == [float(i) for i in range(10, 20)]


def test_seed_method3_many_channels(prefix):
    names = [prefix + f"s{i}" for i in range(100, 300)]
    chids = [ca.create_channel(n, connect=False, auto_cb=False) for n in names]
    for c in chids:
        assert ca.connect_channel(c)
    ca.poll()
    for c in chids:
        ca.get(c, wait=False)
    ca.poll()
    data = {ca.name(c): ca.get_complete(c) for c in chids}
    assert data == {n: float(i) for n, i in zip(names, range(100, 300))}


def test_put_wait_and_callback(prefix):
    c = chan(prefix + "s1500")
    assert ca.put(c, 12.5, wait=True) == 1
    assert ca.get(c) == 12.5
    done = threading.Event()
    seen = {}

    def cb(pvname=None, **kw):
        seen.update(pvname=pvname, **kw)
        done.set()

    ca.put(c, 13.5, callback=cb, callback_data={"tag": 7})
    assert done.wait(5)
    assert seen == {"pvname": prefix + "s1500", "tag": 7}
    assert ca.get(c) == 13.5


def test_put_strings_enums_arrays(prefix):
    so = chan(prefix + "stringout")
    assert ca.put(so, "bye", wait=True) == 1 and ca.get(so) == "bye"
    assert ca.put(so, "hello", wait=True) == 1
    m = chan(prefix + "mbbo")
    assert ca.put(m, "Three", wait=True) == 1 and ca.get(m) == 3
    assert ca.put(m, 2, wait=True) == 1
    w = chan(prefix + "wf_float")
    assert ca.put(w, [9, 8, 7], wait=True) == 1
    assert ca.get(w).tolist() == [9, 8, 7]
    assert ca.put(w, [1, 2, 3, 4, 5], wait=True) == 1  # restore: other tests read the db values
    t = chan(prefix + "wf_text")
    assert ca.put(t, "Bye now", wait=True) == 1 and ca.get(t, as_string=True) == "Bye now"
    assert ca.put(t, "Hello EPICS", wait=True) == 1


@pytest.mark.parametrize("value", ["abc", [1, 2], {"a": 1}, None, float("nan"), 1e12])
def test_put_wrong_value_names_the_pv(prefix, value):
    c = chan(prefix + "longout")
    with pytest.raises(ca.CAError) as info:
        ca.put(c, value)
    assert prefix + "longout" in str(info.value)
    assert isinstance(info.value, (TypeError, ValueError))
    assert ca.get(c) == 42


def test_put_oversize_array_rejected(prefix):
    with pytest.raises(ValueError, match="wf_double"):
        ca.put(chan(prefix + "wf_double"), np.arange(17.0))


def test_subscription_delivers_consecutive_counts(prefix):
    c = chan(prefix + "counter")
    got = []
    ev = threading.Event()

    def cb(value=None, **kw):
        got.append((value, kw["pvname"], kw["severity"]))
        if len(got) >= 6:
            ev.set()

    sub = ca.create_subscription(c, use_time=True, callback=cb)
    assert ev.wait(5)
    ca.clear_subscription(sub[2])
    vals = [v for v, _, _ in got]
    assert all(b - a == 1 for a, b in zip(vals, vals[1:6])), vals
    assert {p for _, p, _ in got} == {prefix + "counter"}


def test_poll_and_pend_return_status():
    assert ca.poll(evt=1e-4, iot=0.01) in (ca.errors.ECA.NORMAL, ca.errors.ECA.TIMEOUT)
    assert isinstance(ca.pend_event(1e-4), int)
    assert ca.flush_io() == 1
    assert ca.current_context() is not None


def test_dead_pv_get_returns_none_and_logs(caplog):
    c = ca.create_channel("capar:does:not:exist")
    caplog.set_level(logging.WARNING, logger="capar")
    t0 = time.monotonic()
    assert ca.get(c, timeout=0.3) is None
    assert time.monotonic() - t0 < 3
    assert "not connected" in caplog.text
    assert ca.connect_channel(c, timeout=0.1) is False


@pytest.mark.parametrize("bad,exc", [(None, TypeError), (123, TypeError), ("", ValueError),
                                     ("x" * 5000, ValueError), ("has space", ValueError),
                                     ("ctl\x01", ValueError)])
def test_bad_names_fail_before_network(bad, exc):
    with pytest.raises(exc):
        ca.create_channel(bad)


def test_create_channel_cache_and_connection_callback(prefix):
    events = []
    c1 = ca.create_channel(prefix + "s42", callback=lambda **kw: events.append(kw["conn"]))
    assert ca.connect_channel(c1, timeout=5)
    time.sleep(0.05)
    c2 = ca.create_channel(prefix + "s42")
    assert c1.value == c2.value
    assert events and events[-1] is True


def test_clear_channel_makes_chid_unknown(prefix):
    c = ca.create_channel(prefix + "s43", connect=True)
    assert ca.clear_channel(c) == 1
    with pytest.raises(ca.CAError):
        ca.name(c)
