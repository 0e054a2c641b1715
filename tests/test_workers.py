"""The job scripts in workers/, run as subprocesses against the session IOC.  Writes use s1200..s1399 only,
and are undone."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import capar

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ["snapshot.py", "archive.py", "restore.py", "monitor_to_file.py"]


def run(script, *args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "workers" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def popen(script, *args):
    return subprocess.Popen([sys.executable, str(ROOT / "workers" / script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def finish(proc, sig=signal.SIGTERM, timeout=30):
    """Signal a Popen we started, wait for it (killing it by its handle if it hangs)."""
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def put_back(prefix, lo, hi):
    names = [f"{prefix}s{i}" for i in range(lo, hi)]
    assert capar.caput_many(names, [float(i) for i in range(lo, hi)], wait=True) == [1] * len(names)


@pytest.mark.parametrize("script", WORKERS)
def test_help(script):
    out = run(script, "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: ") and "exit status" in out.stdout


@pytest.mark.parametrize("script", WORKERS)
def test_bad_request_file_exits_2_with_file_and_line(script, tmp_path):
    bad = tmp_path / "bad.req"
    bad.write_text("x:1\n$(P)x\n")
    if script == "restore.py":
        bad = tmp_path / "bad.json"
        bad.write_text('{"format": "capar-snapshot-1", "pvs": [\n}')
        args = [bad]
    elif script == "snapshot.py":
        args = [bad, tmp_path / "o.npz"]
    else:
        args = [bad, tmp_path / "out"]
    out = run(script, *args)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert f"{bad}:2: " in out.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.npz").exists()


def test_snapshot_request_file_processes(prefix, tmp_path):
    (tmp_path / "ioc.req").write_text("$(P)ao\nfile scalars.req\n$(P)nothere\n")
    (tmp_path / "scalars.req").write_text("".join(f"$(P)s{i}\n" for i in range(0, 2000, 10)))
    out = run("snapshot.py", tmp_path / "ioc.req", tmp_path / "o.json", "-m", f"P={prefix}", "--processes", "2",
              "--timeout", "1")
    assert out.returncode == 1 and out.stderr.strip() == f"{prefix}nothere: not connected"
    assert "202 PVs, 201 ok" in out.stdout
    snap = capar.Snapshot.load(tmp_path / "o.json")
    names = [prefix + "ao"] + [prefix + f"s{i}" for i in range(0, 2000, 10)]
    assert list(snap.names[:-1]) == names
    assert snap.values[:-1].tolist() == capar.caget_many(names)


def test_archive_rotates_and_keeps_last_n(prefix, tmp_path):
    names = tmp_path / "plant.txt"
    names.write_text(f"{prefix}ao\n{prefix}counter\n")
    out = run("archive.py", names, tmp_path / "arch", "--every", "1", "--count", "3", "--keep", "2")
    assert out.returncode == 0, out.stderr
    files = sorted(os.listdir(tmp_path / "arch"))
    assert len(files) == 2 and all(re.fullmatch(r"plant-\d{8}-\d{6}\.npz", f) for f in files), files
    assert len(out.stdout.splitlines()) == 3 and "removed 1 old file" in out.stdout.splitlines()[2]
    stamps = [time.mktime(time.strptime(f[6:21], "%Y%m%d-%H%M%S")) for f in files]
    assert stamps[1] - stamps[0] == 1
    snaps = [capar.Snapshot.load(tmp_path / "arch" / f) for f in files]
    assert all(s.ok.all() and s.values[0] == 3.5 for s in snaps)
    assert snaps[1].values[1] > snaps[0].values[1]  # the counter moved on


def test_archive_stops_cleanly_on_sigterm(prefix, tmp_path):
    names = tmp_path / "n.txt"
    names.write_text("".join(f"{prefix}s{i}\n" for i in range(500)))
    proc = popen("archive.py", names, tmp_path / "arch", "--every", "1", "--keep", "5", "--processes", "2",
                 "--name", "grid")
    try:
        first = proc.stdout.readline()
        assert first.startswith(str(tmp_path / "arch" / "grid-")), first
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0 and "stopped by signal" in err, err
    files = sorted(os.listdir(tmp_path / "arch"))
    assert files and all(f.startswith("grid-") and f.endswith(".npz") for f in files), files  # no temp file
    for f in files:
        snap = capar.Snapshot.load(tmp_path / "arch" / f)
        assert len(snap) == 500 and snap.ok.all()


def test_restore_puts_waits_and_checks(prefix, tmp_path):
    names = [prefix + f"s{i}" for i in range(1200, 1260)]
    (tmp_path / "n.txt").write_text("\n".join(names))
    try:
        assert run("snapshot.py", tmp_path / "n.txt", tmp_path / "s.npz").returncode == 0
        assert capar.caput_many(names, [0.5] * len(names), wait=True) == [1] * len(names)
        dry = run("restore.py", tmp_path / "s.npz", "--dry-run")
        assert dry.returncode == 0 and dry.stdout.splitlines()[0] == f"{prefix}s1200 would change 0.5 -> 1200.0"
        assert capar.caget(prefix + "s1200", use_monitor=False) == 0.5
        out = run("restore.py", tmp_path / "s.npz", "--wait", "--processes", "2")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [f"{n} ok {float(n.rsplit('s', 1)[1])!r}" for n in names]
        assert capar.caget_many(names) == [float(i) for i in range(1200, 1260)]
        # a PV that is gone and one that refuses the write: reported, the others restored
        snap = capar.Snapshot.load(tmp_path / "s.npz")
        doc = json.loads(snap.to_json())
        doc["pvs"][0]["name"] = prefix + "gone"
        doc["pvs"][1]["name"], doc["pvs"][1]["value"], doc["pvs"][1]["kind"] = prefix + "ao.NAME", "x", "str"
        (tmp_path / "edited.json").write_text(json.dumps(doc))
        capar.caput(prefix + "s1205", -1.0, wait=True)
        bad = run("restore.py", tmp_path / "edited.json", "--timeout", "1")
        assert bad.returncode == 1
        assert bad.stdout.splitlines()[:2] == [f"{prefix}gone failed not connected",
                                               f"{prefix}ao.NAME failed no write access"]
        assert f"{prefix}s1205 ok 1205.0" in bad.stdout
        assert f"{prefix}gone: not connected" in bad.stderr and "restored 58 of 60 PVs" in bad.stderr
        assert capar.caget(prefix + "s1205", use_monitor=False) == 1205.0
    finally:
        put_back(prefix, 1200, 1260)


def load_chunks(directory, fmt):
    files = sorted(f for f in os.listdir(directory))
    assert all(not f.startswith(".") for f in files), files
    rows = []
    for f in files:
        if fmt == "npz":
            with np.load(os.path.join(directory, f)) as z:
                assert str(z["format"]) == "capar-monitor-chunk-1" and int(z["overflow"]) == 0
                names = z["names"].tolist()
                rows.append([(names[i], ts, int(k), v, t) for i, ts, k, v, t in
                             zip(z["index"].tolist(), z["timestamp"].tolist(), z["kind"].tolist(),
                                 z["value"].tolist(), z["text"].tolist())])
        else:
            lines = Path(directory, f).read_text().splitlines()
            assert lines[0] == "# capar-monitor-chunk-1 overflow=0"
            assert lines[1] == "name,timestamp,kind,value,status,severity"
            import csv

            rows.append([(r[0], float(r[1]), int(r[2]), r[3], None) for r in csv.reader(lines[2:])])
    return files, rows


def test_monitor_to_file_npz_rotating_by_events(prefix, tmp_path):
    names = [prefix + f"c{i}" for i in range(5)] + [prefix + "stringout", prefix + "wf_double"]
    (tmp_path / "mon.txt").write_text("\n".join(names))
    out = run("monitor_to_file.py", tmp_path / "mon.txt", tmp_path / "out", "--count", "40",
              "--rotate-events", "15")
    assert out.returncode == 0, out.stderr
    files, chunks = load_chunks(tmp_path / "out", "npz")
    assert all(re.fullmatch(r"mon-\d{8}-\d{6}-\d{6}\.npz", f) for f in files)
    assert [len(c) for c in chunks] == [15, 15, 15, 2]   # 7 connection events + 40 value events
    rows = [r for c in chunks for r in c]
    assert sum(1 for r in rows if r[2] == 1) == 7 and sum(1 for r in rows if r[2] == 0) == 40
    assert (prefix + "stringout", "hello") in [(r[0], r[4]) for r in rows if r[2] == 0]
    assert json.loads(next(r[4] for r in rows if r[0] == prefix + "wf_double" and r[2] == 0)) == [1, 2, 3, 4, 5]
    c0 = [r[3] for r in rows if r[0] == prefix + "c0" and r[2] == 0]
    assert c0 == sorted(c0) and all(b - a == 1 for a, b in zip(c0, c0[1:]))
    assert out.stdout.splitlines()[-1].endswith(f"{files[-1]}: 2 events")


def test_monitor_to_file_csv_by_seconds_and_never_connected(prefix, tmp_path):
    (tmp_path / "m.req").write_text("$(P)counter\n$(P)nothere\n")
    out = run("monitor_to_file.py", tmp_path / "m.req", tmp_path / "out", "-m", f"P={prefix}", "--format", "csv",
              "--seconds", "1.6", "--rotate-seconds", "0.5", "--timeout", "0.5", "--name", "run1")
    assert out.returncode == 1 and f"{prefix}nothere: not connected" in out.stderr
    files, chunks = load_chunks(tmp_path / "out", "csv")
    assert 3 <= len(files) <= 5 and all(f.startswith("run1-") and f.endswith(".csv") for f in files), files
    rows = [r for c in chunks for r in c]
    assert (prefix + "nothere", 2) in [(r[0], r[2]) for r in rows]
    counts = [float(r[3]) for r in rows if r[0] == prefix + "counter" and r[2] == 0]
    assert 10 <= len(counts) <= 30 and counts == sorted(counts)


def test_monitor_to_file_flushes_on_sigint(prefix, tmp_path):
    (tmp_path / "m.txt").write_text(f"{prefix}counter\n")
    proc = popen("monitor_to_file.py", tmp_path / "m.txt", tmp_path / "out", "--rotate-events", "5")
    try:
        assert proc.stdout.readline().endswith(": 5 events\n")
        time.sleep(0.35)
    finally:
        out, err = finish(proc, signal.SIGINT)
    assert proc.returncode == 0 and "stopped by signal" in err, err
    files, chunks = load_chunks(tmp_path / "out", "npz")
    assert len(files) >= 2 and all(len(c) <= 5 for c in chunks) and len(chunks[-1]) >= 1
    values = [r[3] for c in chunks for r in c if r[2] == 0]
    assert all(b - a == 1 for a, b in zip(values, values[1:]))   # nothing lost between chunks


@pytest.mark.parametrize("fmt,ext", [("hdf5", "h5"), ("parquet", "parquet")])
def test_archive_series_file_survives_sigkill(prefix, tmp_path, fmt, ext):
    """--format hdf5|parquet: every snapshot goes into ONE file of the day; SIGKILL the job mid-run and read
    back every snapshot it reported, then a restarted job appends to the same file."""
    pytest.importorskip("h5py" if fmt == "hdf5" else "pyarrow")
    names = [prefix + f"s{i}" for i in range(300)] + [prefix + "stringin", prefix + "wf_double", prefix + "c0"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    proc = popen("archive.py", tmp_path / "names.txt", tmp_path / "arch", "--every", "1", "--format", fmt,
                 "--name", "day")
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        time.sleep(0.5)
    finally:
        proc.kill()  # SIGKILL: no clean-up, no close
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    paths = {ln.split(":")[0] for ln in lines}
    assert len(paths) == 1, lines
    path = paths.pop()
    assert re.fullmatch(r"day-\d{8}\." + ext, os.path.basename(path))
    df = capar.read_series(path)
    per = df.groupby("time").size()
    assert len(per) >= 3 and (per == len(names)).all()
    last = df[df.time == per.index[-1]].set_index("name")
    assert last.loc[prefix + "s7", "value"] == 7.0 and last.loc[prefix + "stringin", "values"] == "world"
    assert np.array_equal(last.loc[prefix + "wf_double", "values"], [1, 2, 3, 4, 5])
    c0 = df[df.name == prefix + "c0"].value.to_numpy()
    assert (np.diff(c0) >= 5).all()  # a counter at 10 Hz, one snapshot a second: in order
    out = run("archive.py", tmp_path / "names.txt", tmp_path / "arch", "--every", "1", "--count", "2",
              "--format", fmt, "--name", "day")
    assert out.returncode == 0, out.stderr
    again = capar.read_series(path, [prefix + "s0"], events=False)
    assert len(again) == len(per) + 2 and os.listdir(tmp_path / "arch") == [os.path.basename(path)]


@pytest.mark.parametrize("fmt,ext", [("hdf5", "h5"), ("parquet", "parquet")])
def test_monitor_to_file_series_survives_sigkill(prefix, tmp_path, fmt, ext):
    pytest.importorskip("h5py" if fmt == "hdf5" else "pyarrow")
    (tmp_path / "m.txt").write_text(f"{prefix}c1\n{prefix}stringout\n")
    proc = popen("monitor_to_file.py", tmp_path / "m.txt", tmp_path / "out", "--format", fmt,
                 "--rotate-events", "5")
    try:
        reported = [proc.stdout.readline() for _ in range(3)]
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    path = reported[0].split(":")[0]
    assert re.fullmatch(r"m-\d{8}\." + ext, os.path.basename(path)) and all(path in r for r in reported)
    df = capar.read_series(path)
    assert len(df) >= 15 and (df.source == "event").all()
    c1 = df[(df.name == prefix + "c1") & (df.kind == 0)].value.to_numpy()
    assert len(c1) >= 10 and (np.diff(c1) == 1).all()  # every event of every reported chunk, in order
    assert "hello" in df[df.name == prefix + "stringout"]["values"].tolist()
