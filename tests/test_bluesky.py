"""``capar.bluesky.GroupReadable``: a bluesky baseline read in one bulk read, against real IOCs.

In this process (the session test IOC): ``read``/``describe`` of every record type, compared with ophyd's
``EpicsSignalRO`` (on capar) for the same PVs, IOC timestamps, failures, and a plan with a baseline.  In a child
process, against an IOC of its own with 10,000 records: ``RE(count(...))`` with a 10,000-PV baseline, whose
documents are checked PV by PV here.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("bluesky", reason="bluesky (the ophyd extra) is not installed")

import capar  # noqa: E402
from capar.bluesky import BaselineReadError, GroupReadable, data_key  # noqa: E402
from capar.testing import IOC, db_scalars, unique_prefix  # noqa: E402

try:  # the RunEngine imports ophyd (for its version): let it find capar's control layer, not pyepics
    import capar.ophyd

    capar.ophyd.use_capar()
except ImportError:
    pass

from bluesky import RunEngine, SupplementalData  # noqa: E402
from bluesky.plans import count  # noqa: E402

pytestmark = pytest.mark.timeout(90)

TYPES = ("ao", "ai", "bo", "bi", "mbbo", "mbbi", "longout", "longin", "stringin", "lsi", "int64in", "wf_double",
         "wf_long", "wf_char", "wf_string", "wf_empty", "calc_alarm")


def test_read_and_describe_every_type(prefix: str) -> None:
    names = [prefix + t for t in ("ai", "bi", "mbbi", "longin", "stringin", "wf_double", "wf_char",
                                  "wf_string", "calc_alarm")]
    with GroupReadable(names, name="bl") as bl:
        reading = bl.read()
        assert list(reading) == names and bl.name == "bl" and bl.parent is None and bl.connected
        values = {k[len(prefix):]: v["value"] for k, v in reading.items()}
        assert values["ai"] == 1.25 and values["bi"] == 0 and values["mbbi"] == 1 and values["longin"] == -7
        assert values["stringin"] == "world" and values["wf_string"] == ["a", "bb", "ccc"]
        np.testing.assert_array_equal(values["wf_double"], [1, 2, 3, 4, 5])
        assert values["wf_char"].dtype == np.uint8
        assert reading[prefix + "calc_alarm"]["alarm_severity"] == 2 and reading[prefix + "ai"]["alarm_severity"] == 0
        desc = bl.describe()
    assert list(desc) == names
    ai = desc[prefix + "ai"]
    assert ai["source"] == f"ca://{prefix}ai" and ai["dtype"] == "number" and ai["shape"] == []
    assert ai["dtype_numpy"] == "<f8" and ai["units"] == "V" and ai["precision"] == 2
    assert ai["limits"]["control"] == {"low": 0.0, "high": 100.0} and ai["limits"]["display"] == {"low": 0.0, "high": 100.0}
    assert desc[prefix + "mbbi"]["choices"] == ["A", "B", "C", "D"] and desc[prefix + "mbbi"]["dtype"] == "integer"
    assert desc[prefix + "stringin"] == {"source": f"ca://{prefix}stringin", "dtype": "string", "shape": [],
                                         "dtype_numpy": "<U40"}
    assert desc[prefix + "wf_double"]["dtype"] == "array" and desc[prefix + "wf_double"]["shape"] == [5]
    assert desc[prefix + "wf_char"]["dtype_numpy"] == "|u1"
    assert desc[prefix + "longin"]["dtype"] == "integer" and "precision" not in desc[prefix + "longin"]


def test_timestamps_are_the_iocs(prefix: str) -> None:
    name = prefix + "c0"  # a counter processing at 10 Hz
    bl = GroupReadable([name, prefix + "ai"])
    try:
        first = bl.read()
        pv = capar.PV(name, auto_monitor=False)
        md = pv.get_with_metadata(use_monitor=False, timeout=5)
        later = bl.read()
    finally:
        bl.close()
    # the IOC's processing times, in order, and the value of each is the record's at that time
    assert first[name]["timestamp"] <= md["timestamp"] <= later[name]["timestamp"]
    assert first[name]["value"] <= md["value"] <= later[name]["value"]
    assert first[prefix + "ai"]["timestamp"] == later[prefix + "ai"]["timestamp"]  # not re-processed: same stamp


def test_same_as_ophyd_signals(prefix: str) -> None:
    ophyd = pytest.importorskip("ophyd", reason="ophyd (the ophyd extra) is not installed")
    names = [prefix + t for t in TYPES]
    sigs = [ophyd.EpicsSignalRO(n, name=n) for n in names]
    for s in sigs:
        s.wait_for_connection(timeout=10)
    with GroupReadable(names) as bl:
        reading, desc = bl.read(), bl.describe()
    for s, n in zip(sigs, names):
        want = s.read()[n]
        got = reading[n]
        if isinstance(want["value"], np.ndarray):
            np.testing.assert_array_equal(got["value"], want["value"])
        else:
            assert got["value"] == want["value"] and type(got["value"]) is type(want["value"]), n
        ref = s.describe()[n]
        mine = desc[n]
        assert (mine["dtype"], mine["shape"]) == (ref["dtype"], ref["shape"]), n
        for key in ("units", "precision", "enum_strs", "lower_ctrl_limit", "upper_ctrl_limit"):
            if ref.get(key) not in (None, ""):
                assert mine.get(key) == ref[key], (n, key)
        s.destroy()


def test_failed_pvs_raise_or_fill(prefix: str) -> None:
    names = [prefix + "ai", prefix + "no_such_record", prefix + "stringin"]
    strict = GroupReadable(names, connection_timeout=0.5)
    try:
        with pytest.raises(BaselineReadError) as info:
            strict.read()
        assert info.value.failed == [(prefix + "no_such_record", "not connected")]
        with pytest.raises(BaselineReadError):
            strict.wait_for_connection(timeout=0.2)
    finally:
        strict.close()
    lenient = GroupReadable(names, connection_timeout=0.5, on_failure="fill")
    try:
        reading = lenient.read()  # the failure is logged (a warning record), the rest is read
        bad = reading[prefix + "no_such_record"]
        assert math.isnan(bad["value"]) and bad["alarm_severity"] == -1 and bad["message"] == "not connected"
        assert reading[prefix + "ai"]["value"] == 1.25 and "message" not in reading[prefix + "ai"]
        assert lenient.describe()[prefix + "no_such_record"]["dtype"] == "number"
        assert not lenient.last.ok[1]
    finally:
        lenient.close()
    with pytest.raises(ValueError):
        GroupReadable([prefix + "ai", prefix + "ai"])  # one data key per PV
    with pytest.raises(ValueError):
        GroupReadable([prefix + "ai"], on_failure="ignore")


def test_data_key_of_unknown_pv() -> None:
    assert data_key("X", -1, None) == {"source": "ca://X", "dtype": "number", "shape": [], "dtype_numpy": "<f8"}


def test_plan_with_baseline(prefix: str) -> None:
    names = [prefix + t for t in ("ai", "longin", "stringin", "mbbi", "wf_double")]
    baseline = GroupReadable(names, name="machine")
    det = GroupReadable([prefix + "ai"], name="det", keys=["det"])
    RE = RunEngine({})
    RE.preprocessors.append(SupplementalData(baseline=[baseline]))
    docs: list[tuple[str, dict]] = []
    try:
        RE(count([det], num=2), lambda name, doc: docs.append((name, doc)))
    finally:
        baseline.close()
        det.close()
    assert [n for n, _ in docs] == ["start", "descriptor", "event", "descriptor", "event", "event", "event", "stop"]
    descs = {d["name"]: d for n, d in docs if n == "descriptor"}
    assert set(descs["baseline"]["data_keys"]) == set(names)
    assert descs["baseline"]["object_keys"] == {"machine": names}
    assert descs["primary"]["data_keys"]["det"]["source"] == f"ca://{prefix}ai"
    base = [d for n, d in docs if n == "event" and d["descriptor"] == descs["baseline"]["uid"]]
    assert len(base) == 2
    for ev in base:
        assert ev["data"][prefix + "ai"] == 1.25 and ev["data"][prefix + "stringin"] == "world"
        assert ev["timestamps"][prefix + "ai"] == base[0]["timestamps"][prefix + "ai"]  # the IOC's stamp
    assert docs[-1][1]["num_events"] == {"baseline": 2, "primary": 2}


BASELINE_10K = r'''
import json, sys
from capar.bluesky import GroupReadable
from bluesky import RunEngine, SupplementalData
from bluesky.plans import count
P, n = sys.argv[1], int(sys.argv[2])
names = [f"{P}s{i}" for i in range(n)]
baseline = GroupReadable(names, name="machine", timeout=10.0, connection_timeout=20.0)
det = GroupReadable([names[7]], name="det", keys=["det"])
RE = RunEngine({})
RE.preprocessors.append(SupplementalData(baseline=[baseline]))
docs = []
RE(count([det], num=1), lambda name, doc: docs.append((name, doc)))
desc = [d for name, d in docs if name == "descriptor" and d["name"] == "baseline"][0]
events = [d for name, d in docs if name == "event" and d["descriptor"] == desc["uid"]]
out = {"names": [name for name, _ in docs], "keys": list(desc["data_keys"]),
       "sample_key": desc["data_keys"][names[3]], "object_keys": {k: len(v) for k, v in desc["object_keys"].items()},
       "values": [[ev["data"][k] for k in names] for ev in events],
       "stamps_ok": [all(ev["timestamps"][k] > 1e9 for k in names) for ev in events],
       "num_events": docs[-1][1]["num_events"]}
print("RESULT " + json.dumps(out))
'''


def test_baseline_of_10000_pvs() -> None:
    n = 10_000
    P = unique_prefix("B")
    with IOC(db_scalars(P, n), name="baseline-10k", prefix=P) as server:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(server.env)
        env["OPHYD_CONTROL_LAYER"] = "dummy"  # the RunEngine imports ophyd for its version: no pyepics
        proc = subprocess.run([sys.executable, "-c", BASELINE_10K, P, str(n)], capture_output=True, text=True,
                              env=env, timeout=80)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    out = json.loads(lines[-1][len("RESULT "):])
    names = [f"{P}s{i}" for i in range(n)]
    assert out["names"] == ["start", "descriptor", "event", "descriptor", "event", "event", "stop"]
    assert out["keys"] == names and out["object_keys"] == {"machine": n}
    assert out["sample_key"] == {
        "source": f"ca://{P}s3", "dtype": "number", "shape": [], "dtype_numpy": "<f8", "units": "u",
        "precision": 2, "limits": {"control": {"low": 0.0, "high": 0.0}, "display": {"low": 0.0, "high": 0.0}},
        "lower_ctrl_limit": 0.0, "upper_ctrl_limit": 0.0, "object_name": "machine"}
    assert len(out["values"]) == 2 and out["stamps_ok"] == [True, True]
    for values in out["values"]:  # every PV, at its place, with its record's value
        assert values == [float(i) for i in range(n)]
    assert out["num_events"] == {"baseline": 2, "primary": 1}
