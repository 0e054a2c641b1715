"""TimeSeriesWriter / read_series: snapshots and monitor batches appended to one HDF5 or Parquet file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("h5py", reason="the 'hdf5' extra is not installed")
pytest.importorskip("pyarrow", reason="the 'parquet' extra is not installed")

import capar  # noqa: E402
from capar.series import TimeSeriesWriter, read_series  # noqa: E402

FORMATS = ["h5", "parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_snapshots_and_monitor_batches_read_back(tmp_path, prefix, fmt):
    names = [prefix + n for n in ("ao", "longin", "stringin", "wf_double", "nothere")]
    path = tmp_path / f"series.{fmt}"
    snaps = []
    with TimeSeriesWriter(path, names + [prefix + "c0"]) as w:
        for k in range(3):
            snap = capar.acquire(names, connection_timeout=0.3)
            snap.created = 1_000_000.0 + 60 * k
            w.append(snap)
            snaps.append(snap)
        with capar.Monitor([prefix + "c0", prefix + "stringin", names[0], prefix + "s5"]) as mon:  # s5: not kept
            mnames = mon.names
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:  # c0 counts at 10 Hz
                b = mon.get_batch(timeout=0.5)
                if b is not None:
                    w.append_batch(b, mnames)
    df = read_series(path)
    snap_rows = df[df.source == "snapshot"]
    assert len(snap_rows) == 3 * len(names)  # c0 was in no snapshot: no row
    for k, snap in enumerate(snaps):
        rows = snap_rows[snap_rows.time == snap.created].set_index("name")
        assert rows.loc[names[0], "value"] == 3.5 and rows.loc[names[2], "values"] == snap.values[2]
        assert np.array_equal(rows.loc[names[3], "values"], snap.values[3])
        assert not rows.loc[names[4], "ok"] and rows.loc[names[4], "error"] == snap.error[4]
        assert rows.loc[names[0], "timestamp"] == snap.timestamp[0]
    ev = df[df.source == "event"]
    assert len(ev) >= 5 and set(ev.name) == {prefix + "c0", prefix + "stringin", names[0]}
    counts = ev[ev.kind == 0].groupby("name").size()
    assert counts[prefix + "c0"] >= 5
    c0 = ev[(ev.name == prefix + "c0") & (ev.kind == 0)].value.to_numpy()
    assert (np.diff(c0) == 1).all()  # in order, no gap
    # PV X over a time range: one read
    one = read_series(path, [names[0]], start=1_000_030.0, stop=1_000_200.0, events=False)
    assert one.time.tolist() == [1_000_060.0, 1_000_120.0] and set(one.name) == {names[0]}
    cols = read_series(path, [names[0]], start=1_000_030.0, stop=1_000_200.0, events=False, as_frame=False)
    assert cols["time"].tolist() == [1_000_060.0, 1_000_120.0] and cols["value"].tolist() == [3.5, 3.5]


WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from capar.snapshot import Snapshot, Row
    from capar.series import TimeSeriesWriter
    path, n = sys.argv[1], int(sys.argv[2])
    names = ["P:%d" % i for i in range(n)]
    w = TimeSeriesWriter(path, names)
    k = 0
    while True:
        rows = [Row(nm, float(k), 0, 0, 1.0, True, None) for nm in names[:-1]]
        rows.append(Row(names[-1], np.arange(k % 7, dtype=float), 0, 0, 1.0, True, None))
        snap = Snapshot.from_rows(rows)
        snap.created = 1000.0 + k
        w.append(snap)
        k += 1
        print(k, flush=True)
""")


@pytest.mark.parametrize("fmt", FORMATS)
def test_killed_writer_leaves_every_completed_append(tmp_path, fmt):
    """SIGKILL a writer at a random moment (mid-append, most likely): the file reads back with every append
    it completed, each whole (no half row), readable while it was being written too."""
    path = tmp_path / f"crash.{fmt}"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "2000"], stdout=subprocess.PIPE, text=True)
    try:
        seen = 0
        while seen < 30:
            seen = int(child.stdout.readline())
        if fmt == "h5":  # a reader while the writer runs (HDF5's SWMR mode)
            live = read_series(path, ["P:0"], events=False)
            assert len(live) >= 30 and live.value.tolist() == [float(i) for i in range(len(live))]
        time.sleep(0.05 + (os.getpid() % 7) / 100)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    done = seen + sum(1 for _ in child.stdout)  # appends the writer reported complete
    child.stdout.close()
    df = read_series(path, events=False)
    rows = df.groupby("time").size()
    assert (rows == 2000).all()  # whole appends only
    k = len(rows)
    assert done <= k <= done + 1  # every completed append, plus at most the one whose line was not printed
    assert rows.index.tolist() == [1000.0 + i for i in range(k)]
    last = df[df.time == rows.index[-1]]
    assert last[last.name == "P:0"].value.tolist() == [float(k - 1)]
    assert np.array_equal(last[last.name == "P:1999"]["values"].iloc[0], np.arange((k - 1) % 7, dtype=float))
    # the next writer appends to what is there
    with TimeSeriesWriter(path, [f"P:{i}" for i in range(2000)]) as w:
        snap = capar.Snapshot.from_rows([capar.snapshot.Row("P:0", -1.0, 0, 0, 1.0, True, None)])
        snap.created = 5000.0
        w.append(snap)
    again = read_series(path, ["P:0"], events=False)
    assert len(again) == k + 1 and again.value.tolist()[-1] == -1.0


def test_unknown_suffix_and_other_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown time series format"):
        TimeSeriesWriter(tmp_path / "x.txt", ["a"])
    TimeSeriesWriter(tmp_path / "x.h5", ["a", "b"]).close()
    with pytest.raises(ValueError, match="other PV names"):
        TimeSeriesWriter(tmp_path / "x.h5", ["a", "c"])
