"""``epics.autosave`` on capar: ``.sav`` files as synApps autosave writes them, read back by capar (``restore_pvs``,
``Snapshot.load``, ``capar restore``) and, for what pyepics can parse, by pyepics' own ``restore_pvs``."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capar
from _diff import run_side
from capar.autosave import SavFormatError, format_sav, read_sav, restore_pvs, save_pvs
from capar.snapshot import Snapshot, SnapshotFormatError

#: records of the session IOC this module writes (each is put back to its saved value by the test itself)
RECORDS = ["ao", "mbbo", "stringout", "longout", "bo", "int64out", "wf_double", "wf_string", "wf_char", "wf_long"]


def current(prefix: str) -> list:
    snap = capar.acquire([prefix + r for r in RECORDS], timeout=5.0)
    assert snap.ok.all(), snap.failed
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in snap.values.tolist()]


def scribble(prefix: str) -> None:
    res = capar.caput_many([prefix + r for r in RECORDS],
                           [-1.25, 0, "scribbled", 7, 0, 5, [9.0, 8.0], ["x"], [1, 1, 1], [7, 7]], wait="all")
    assert res == [1] * len(RECORDS)


@pytest.fixture
def request_file(tmp_path, prefix):
    path = tmp_path / "ioc.req"
    (tmp_path / "more.req").write_text("$(P)wf_string\n$(P)wf_char\n$(P)wf_long\n")
    path.write_text("# autosave request file\n" + "".join(f"{prefix}{r}\n" for r in RECORDS[:7]) +
                    f"file more.req P={prefix}\n{prefix}nothere\n")
    return path


def test_save_pvs_writes_the_synapps_layout(request_file, tmp_path, prefix):
    out = tmp_path / "ioc.sav"
    save_pvs(str(request_file), str(out), timeout=1.0)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# autosave R5.3\tAutomatically generated - DO NOT MODIFY - ")
    assert lines[1] == "! 1 channel(s) not connected - or not all gets were successful"
    P = prefix
    assert lines[2:] == [
        f"{P}ao 3.5", f"{P}mbbo 2", f"{P}stringout hello", f"{P}longout 42", f"{P}bo 1",
        f"{P}int64out -8589934592", f'{P}wf_double @array@ {{ "1" "2" "3" "4" "5" }}',
        f'{P}wf_string @array@ {{ "a" "bb" "ccc" }}', f'{P}wf_char @array@ {{ "1" "2" "3" "4" "5" }}',
        f'{P}wf_long @array@ {{ "1" "2" "3" "4" "5" }}', f"#{P}nothere ", "<END>"]


def test_restore_pvs_and_capar_restore_put_the_saved_values_back(request_file, tmp_path, prefix):
    saved = tmp_path / "ioc.sav"
    original = current(prefix)
    save_pvs(str(request_file), str(saved), timeout=1.0)
    try:
        scribble(prefix)
        assert current(prefix) != original
        assert restore_pvs(str(saved)) is True
        time.sleep(0.3)
        assert current(prefix) == original
        scribble(prefix)
        proc = subprocess.run([sys.executable, "-m", "capar", "restore", "--wait", str(saved)],
                              capture_output=True, text=True, timeout=60)
        # the PV that was not saved is skipped and said so; every saved one is back
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{prefix}nothere skipped" in proc.stdout and "not saved" in proc.stdout
        assert current(prefix) == original
        snap = Snapshot.load(saved)
        assert snap.n_ok == len(RECORDS) and not snap.ok[-1]
    finally:
        capar.caput_many([prefix + r for r in RECORDS], original, wait="all")


def test_pyepics_restores_capar_files_and_capar_restores_pyepics_files(tmp_path, prefix, ioc):
    original = current(prefix)
    req = tmp_path / "s.req"
    req.write_text("".join(prefix + r + "\n" for r in RECORDS))
    capar_sav, pyepics_sav = tmp_path / "capar.sav", tmp_path / "pyepics.sav"
    save_pvs(str(req), str(capar_sav))
    # pyepics parses scalars only from synApps files (its arrays are JSON): give it those lines
    text = capar_sav.read_text().splitlines()
    (tmp_path / "scalars.sav").write_text("\n".join(ln for ln in text if "@array@" not in ln) + "\n")
    save = "import sys\nfrom epics.autosave import save_pvs\nsave_pvs(sys.argv[1], sys.argv[2])\nemit(True)\n"
    restore = ("import sys, time\nfrom epics.autosave import restore_pvs\nok = restore_pvs(sys.argv[1])\n"
               "time.sleep(0.5)\nemit(ok)\n")  # pyepics puts without waiting: stay until they have gone out
    try:
        assert run_side(save, [str(req), str(pyepics_sav)], ioc.env, False, 60) is True
        assert pyepics_sav.read_text().startswith("# File saved by pyepics")
        scribble(prefix)
        assert run_side(restore, [str(tmp_path / "scalars.sav")], ioc.env, False, 60) is True
        time.sleep(0.3)
        assert current(prefix)[:6] == original[:6]  # pyepics restored capar's file
        scribble(prefix)
        assert restore_pvs(str(pyepics_sav)) is True  # capar reads pyepics' JSON arrays too
        time.sleep(0.3)
        now = current(prefix)
        assert now[:6] == original[:6] and now[6] == original[6] and now[7] == original[7]
    finally:
        capar.caput_many([prefix + r for r in RECORDS], original, wait="all")


def test_bad_sav_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.sav"
    bad.write_text('# autosave R5.3\tAutomatically generated\nA 1\nB @array@ { "1" 2 }\n<END>\n')
    with pytest.raises(SavFormatError, match=r"bad\.sav:3: array element"):
        read_sav(bad)
    bad.write_text("A 1\nB 2\n")
    with pytest.raises(SnapshotFormatError, match="truncated .sav file"):
        Snapshot.load(bad)
    bad.write_text("A 1\n<END>\nB 2\n")
    with pytest.raises(SnapshotFormatError, match=r"bad\.sav:3: data after <END>"):
        Snapshot.load(bad)
    bad.write_text('A @array@ { "1" "2"\n<END>\n')
    with pytest.raises(SnapshotFormatError, match="closing"):
        Snapshot.load(bad)
    bad.write_bytes(b"A \xff\n<END>\n")
    with pytest.raises(SnapshotFormatError, match="not UTF-8"):
        Snapshot.load(bad)


def test_snapshot_save_as_sav_round_trips(tmp_path, prefix):
    snap = capar.acquire([prefix + r for r in RECORDS] + [prefix + "nothere"], timeout=2.0, connection_timeout=1.0)
    path = snap.save(tmp_path / "snap.sav")
    back = Snapshot.load(path)
    assert back.names.tolist() == snap.names.tolist() and back.ok.tolist() == snap.ok.tolist()
    assert not snap.diff(back).changed


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30).filter(
    lambda s: not s.startswith("@array@"))
scalar = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), text)
array = st.one_of(st.lists(st.integers(-2**31, 2**31 - 1), max_size=8).map(lambda v: np.asarray(v, np.int64)),
                  st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=8)
                  .map(lambda v: np.asarray(v, np.float64)),
                  st.lists(text, min_size=1, max_size=5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(scalar, array), min_size=1, max_size=6), data=st.data())
def test_sav_text_round_trips(tmp_path, values, data):
    names = [f"X:{i}" for i in range(len(values))]
    ok = [data.draw(st.booleans()) or i == 0 for i in range(len(values))]
    path = tmp_path / "h.sav"
    path.write_text(format_sav(names, values, ok), encoding="utf-8")
    entries = read_sav(path)
    assert [e.name for e in entries] == names and [e.saved for e in entries] == ok
    for v, e, good in zip(values, entries, ok):
        if not good:
            assert e.value is None
        elif isinstance(v, str):
            assert e.text == v  # the text as saved, whatever it looks like
        elif isinstance(v, float):
            assert e.value == float("%.14g" % v)  # autosave's DOUBLE format keeps 14 digits
        elif isinstance(v, int):
            assert e.value == v
        elif isinstance(v, list):
            assert [str(x) for x in (e.value.tolist() if isinstance(e.value, np.ndarray) else e.value)] == \
                [str(x) for x in (v if not all(_numeric(x) for x in v) else [_num(x) for x in v])]
        elif v.dtype.kind == "f":
            assert e.value.tolist() == [float("%.14g" % x) for x in v.tolist()]
        else:
            assert e.value.tolist() == v.tolist()


def _numeric(s: str) -> bool:
    try:
        float(s)
        return s.strip() == s and s != ""
    except ValueError:
        return False


def _num(s: str) -> object:
    try:
        return int(s) if s.lstrip("+-").isdigit() else float(s)
    except ValueError:
        return float(s)


def test_epics_autosave_module_paths():
    import capar.autosave.save_restore as sr

    assert sr.save_pvs is save_pvs and sr.AutoSaver is capar.autosave.AutoSaver
    assert os.path.basename(capar.autosave.__file__) == "__init__.py"
