"""Snapshot columns, files (JSON/CSV/NPZ round trips) and diff."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capar
from capar import Snapshot, acquire
from capar.snapshot import Row, SnapshotFormatError

SAMPLE = [
    Row("A:f", 1.0 / 3.0, 0, 0, 1.7e9 + 0.123456789, True, None),
    Row("A:i", -(2**40), 0, 1, 1.7e9, True, None),
    Row("A:s", "héllo, \"world\"\n", 3, 2, 1.7e9, True, None),
    Row("A:arr", np.array([1.5, np.nan, -np.inf, 1e-300]), 0, 0, 1.7e9, True, None),
    Row("A:iarr", np.array([1, -2, 3], dtype=np.int32), 0, 0, 1.7e9, True, None),
    Row("A:u8", np.array([72, 105, 0], dtype=np.uint8), 0, 0, 1.7e9, True, None),
    Row("A:empty", np.zeros(0), 0, 0, 1.7e9, True, None),
    Row("A:strs", ["a", "bb", ""], 0, 0, 1.7e9, True, None),
    Row("A:dead", None, -1, -1, float("nan"), False, "not connected"),
    Row("A:f", float("nan"), 0, 0, 1.7e9, True, None),
]


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


FORMATS = [".json", ".csv", ".npz", ".h5", ".parquet"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_exact(tmp_path, suffix):
    snap = Snapshot.from_rows(SAMPLE, form="time")
    path = snap.save(tmp_path / ("snap" + suffix))
    back = Snapshot.load(path)
    assert back.names.tolist() == snap.names.tolist()
    for a, b in zip(snap.values, back.values):
        assert _same(a, b), (a, b)
    assert back.status.tolist() == snap.status.tolist()
    assert back.severity.tolist() == snap.severity.tolist()
    assert np.array_equal(back.timestamp, snap.timestamp, equal_nan=True)
    assert back.ok.tolist() == snap.ok.tolist() and back.error.tolist() == snap.error.tolist()
    assert back.form == "time" and back.created == snap.created
    assert not snap.diff(back)


def test_live_snapshot_round_trip(tmp_path, prefix):
    names = [prefix + r for r in ("ao", "longin", "stringin", "wf_double", "wf_string", "mbbo", "nothere")]
    snap = acquire(names, connection_timeout=0.5)
    for suffix in FORMATS:
        back = Snapshot.load(snap.save(tmp_path / ("live" + suffix)))
        assert not snap.diff(back), str(snap.diff(back))
        assert back.ok.tolist() == [True] * 6 + [False]


def test_diff_reports_changed_missing_added():
    a = Snapshot.from_rows([Row("x", 1.0, 0, 0, 0.0, True, None), Row("y", 2.0, 0, 0, 0.0, True, None),
                            Row("z", 3.0, 0, 0, 0.0, True, None)])
    b = Snapshot.from_rows([Row("x", 1.05, 0, 0, 0.0, True, None), Row("y", None, -1, -1, 0.0, False, "timeout"),
                            Row("w", 0.0, 0, 0, 0.0, True, None)])
    d = a.diff(b)
    assert [c[0] for c in d.changed] == ["x"]
    assert sorted(d.missing) == ["y", "z"] and d.added == ["w"]
    assert not [c for c in a.diff(b, atol=0.1).changed]


def test_bad_files_name_file_and_line(tmp_path):
    with pytest.raises(SnapshotFormatError, match="no such file"):
        Snapshot.load(tmp_path / "missing.json")
    p = tmp_path / "trunc.json"
    good = Snapshot.from_rows(SAMPLE).to_json()
    p.write_text(good[: len(good) // 2])
    with pytest.raises(SnapshotFormatError, match=r"trunc.json:\d+"):
        Snapshot.load(p)
    c = tmp_path / "bad.csv"
    lines = Snapshot.from_rows(SAMPLE).to_csv().splitlines()
    lines[3] = "A:x,float,notjson,0,0,1,1,"
    c.write_text("\n".join(lines))
    with pytest.raises(SnapshotFormatError, match="bad.csv:4"):
        Snapshot.load(c)
    b = tmp_path / "bin.csv"
    b.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SnapshotFormatError, match="UTF-8"):
        Snapshot.load(b)
    with pytest.raises(ValueError):
        Snapshot.from_rows(SAMPLE).save(tmp_path / "x.txt")


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**62), 2**62), st.text(max_size=40),
    st.lists(st.floats(allow_nan=False), max_size=20).map(lambda v: np.asarray(v, dtype=np.float64)),
    st.lists(st.text(max_size=10), max_size=5), st.none())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vals=st.lists(values, max_size=8), suffix=st.sampled_from(FORMATS))
def test_round_trip_property(tmp_path, vals, suffix):
    rows = [Row(f"P:{i}", v, 0, 0, 1.0, v is not None, None if v is not None else "timeout")
            for i, v in enumerate(vals)]
    snap = Snapshot.from_rows(rows)
    back = Snapshot.load(snap.save(tmp_path / ("h" + suffix)))
    for a, b in zip(snap.values, back.values):
        assert _same(a, b), (a, b)


def test_saved_file_has_umask_permissions(tmp_path):
    import os

    path = Snapshot.from_rows(SAMPLE).save(tmp_path / "perm.json")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["perm.json"]  # no temporary file left


def test_take_and_concat_keep_every_column(prefix):
    names = [prefix + n for n in ("ao", "mbbo", "nothere", "wf_double", "stringin")]
    snap = capar.acquire(names, form="ctrl", timeout=2.0, connection_timeout=0.5)
    part = snap.take([3, 0])
    assert part.names.tolist() == [names[3], names[0]] and part.form == "ctrl"
    assert part.values[1] == 3.5 and part.values[0].tolist() == [1, 2, 3, 4, 5]
    assert part.ctrl["units"].tolist() == [snap.ctrl["units"][3], snap.ctrl["units"][0]]
    whole = capar.Snapshot.concat([snap.take(slice(0, 2)), snap.take(slice(2, 5))])
    assert whole.names.tolist() == names and whole.ok.tolist() == snap.ok.tolist()
    assert whole.error[2] == snap.error[2] and not snap.diff(whole).changed
    assert sorted(whole.ctrl) == sorted(snap.ctrl)
    assert capar.Snapshot.concat([snap]) is snap
    with pytest.raises(ValueError):
        capar.Snapshot.concat([])


# -- ctrl metadata, files of older capar versions, compression ----------------------------------------------

def _same_ctrl(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        assert x.dtype == y.dtype, (k, x.dtype, y.dtype)
        if x.dtype == object:
            assert [type(v) for v in x.tolist()] == [type(v) for v in y.tolist()], k
            assert x.tolist() == y.tolist(), k
        else:
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), k


def test_ctrl_snapshot_round_trips_in_every_format(tmp_path, prefix):
    """form='ctrl': units, precision, limits and enum strings survive save/load exactly (they used to be
    dropped), so a reloaded snapshot can still show enum strings."""
    names = [prefix + n for n in ("ao", "mbbo", "stringin", "wf_double", "nothere")]
    snap = capar.acquire(names, form="ctrl", timeout=2.0, connection_timeout=0.5)
    assert snap.ctrl["enum_strs"][1] and snap.ctrl["precision"][0] >= 0
    for suffix in FORMATS:
        back = Snapshot.load(snap.save(tmp_path / ("ctrl" + suffix)))
        assert back.form == "ctrl" and not snap.diff(back)
        _same_ctrl(snap.ctrl, back.ctrl)
        assert back.ctrl["enum_strs"][1] == snap.ctrl["enum_strs"][1]


cells = st.one_of(st.none(), st.text(max_size=12), st.lists(st.text(max_size=8), max_size=4).map(tuple))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), n=st.integers(0, 6), suffix=st.sampled_from(FORMATS))
def test_ctrl_round_trip_property(tmp_path, data, n, suffix):
    rows = [Row(f"P:{i}", float(i), 0, 0, 1.0, True, None) for i in range(n)]
    snap = Snapshot.from_rows(rows, form="ctrl")
    snap.ctrl = {
        "upper_disp_limit": np.asarray(data.draw(st.lists(st.floats(), min_size=n, max_size=n)), dtype=np.float64),
        "precision": np.asarray(data.draw(st.lists(st.integers(-32768, 32767), min_size=n, max_size=n)),
                                dtype=np.int16),
        "units": np.asarray(data.draw(st.lists(cells, min_size=n, max_size=n)) + [None], dtype=object)[:n],
        "enum_strs": np.asarray(data.draw(st.lists(cells, min_size=n, max_size=n)) + [None], dtype=object)[:n],
    }
    back = Snapshot.load(snap.save(tmp_path / ("c" + suffix)))
    _same_ctrl(snap.ctrl, back.ctrl)


@pytest.mark.parametrize("suffix", ["json", "csv", "npz"])
def test_files_of_capar_0_1_still_load(suffix):
    """Files written before ctrl was saved (and, for NPZ, before arrays were packed and compressed)."""
    import pathlib

    snap = Snapshot.load(pathlib.Path(__file__).parent / "data" / f"snapshot-0.1.{suffix}")
    assert snap.names.tolist() == ["A:f", "A:s", "A:arr", "A:iarr", "A:strs", "A:dead"]
    assert snap.values[0] == 1.0 / 3.0 and snap.values[1] == "héllo" and snap.values[4] == ["a", "bb"]
    assert np.array_equal(snap.values[2], [1.5, np.nan, -np.inf], equal_nan=True)
    assert snap.values[3].dtype == np.int32 and snap.values[3].tolist() == [1, -2, 3]
    assert snap.ok.tolist() == [True] * 5 + [False] and snap.error[5] == "not connected"
    assert snap.ctrl == {} and snap.created == 1.7e9


def test_npz_is_compressed_with_one_member_per_dtype(tmp_path):
    import zipfile

    rows = [Row(f"W:{i}", np.zeros(10_000), 0, 0, 1.0, True, None) for i in range(50)]
    rows += [Row("W:i", np.arange(5, dtype=np.int32), 0, 0, 1.0, True, None)]
    path = Snapshot.from_rows(rows).save(tmp_path / "w.npz")
    with zipfile.ZipFile(path) as z:
        packs = [i for i in z.infolist() if i.filename.startswith("pack_")]
        assert len(packs) == 2 and all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    import os

    assert os.path.getsize(path) < 50 * 10_000 * 8 / 50  # zeros compress by far more than 50x
    back = Snapshot.load(path)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(back.values, [r.value for r in rows]))
