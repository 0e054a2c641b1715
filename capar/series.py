"""Time series in one file: snapshots and monitor batches appended to HDF5 or Parquet, read back by time.

A job that snapshots 10,000 PVs every minute for weeks should leave one file per day, not one per snapshot,
and "PV X over the last day" should be one read.  :class:`TimeSeriesWriter` appends; :func:`read_series`
reads a time range of some PVs as a pandas DataFrame (long format: one row per PV and snapshot or event).

HDF5 (``.h5``/``.hdf5``, extra ``capar[hdf5]``, h5py), a column per PV:
    ``/names`` (N,) · ``/snapshots/{time, value, status, severity, timestamp, ok}`` (R,) and (R, N),
    resizable, one row per snapshot; values that are not numbers (text, arrays: ragged) and errors go to
    ``/snapshots/sparse/{row, col, offset, length}`` + ``bytes`` (UTF-8 JSON); monitor events to
    ``/events/{index, kind, value, timestamp, status, severity, time, offset, length}`` (M,) + ``bytes``.
    Only fixed-size types are appended (variable-length HDF5 data is not safe for concurrent readers).  Crash-safe: the file is written in HDF5's single-writer
    /multiple-reader mode and each append ends by storing its row count in ``.../committed`` after the data;
    readers open it in SWMR mode and read only committed rows, so a writer killed at any point leaves a
    readable file with every completed append (and it can be read while the writer runs).
Parquet (``.parquet``, extra ``capar[parquet]``, pyarrow), long format (``seq, time, source, name, value,
    status, severity, timestamp, ok, kind, payload, error``): each append is written atomically (temp +
    rename) as one row group in ``PATH.parts/``; :meth:`TimeSeriesWriter.close` compacts the parts into
    ``PATH`` (one row group per append) and removes them.  A writer killed before closing leaves its parts;
    :func:`read_series` reads ``PATH`` and any parts (rows deduplicated by ``seq``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .snapshot import Snapshot, _encode

__all__ = ["TimeSeriesWriter", "read_series", "SERIES_FORMAT"]

SERIES_FORMAT = "capar-series-1"


def _format_of(path: str, format: Optional[str]) -> str:
    fmt = (format or os.path.splitext(path)[1].lstrip(".")).lower()
    fmt = {"h5": "hdf5", "hdf5": "hdf5", "parquet": "parquet", "pq": "parquet"}.get(fmt, fmt)
    if fmt not in ("hdf5", "parquet"):
        raise ValueError(f"unknown time series format {fmt!r} for {path!r} (use .h5, .hdf5 or .parquet)")
    return fmt


def _payload(v: Any) -> Optional[str]:
    """JSON of a value that the float column cannot hold (None for numbers)."""
    if v is None or isinstance(v, (bool, int, float, np.integer, np.floating)):
        return None
    kind, payload = _encode(v)
    return json.dumps([kind, payload], allow_nan=False)


def _unpayload(text: Optional[str]) -> Any:
    if not text:
        return None
    from .snapshot import _decode

    kind, payload = json.loads(text)
    return _decode(kind, payload)


@contextlib.contextmanager
def _replacing(path: str, suffix: str) -> Iterator[str]:
    """A temporary file beside *path* to write; renamed onto *path* when the block ends, removed if it fails
    (a reader never sees a half-written file)."""
    fd, tmp = tempfile.mkstemp(prefix=".capar-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("HDF5 files need h5py: pip install 'capar[hdf5]'") from exc
    return h5py


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise ImportError("Parquet files need pyarrow: pip install 'capar[parquet]'") from exc
    return pyarrow


class TimeSeriesWriter:
    """Append snapshots (:meth:`append`) and monitor batches (:meth:`append_batch`) of *names* to one file.

    path : ``.h5``/``.hdf5`` or ``.parquet`` (or *format* 'hdf5'/'parquet').  An existing file is appended
    to when its PV names are the same (HDF5: created again otherwise is an error; see module docstring).
    """

    def __init__(self, path: str | os.PathLike, names: Sequence[str], format: Optional[str] = None) -> None:
        self.path = os.fspath(path)
        self.format = _format_of(self.path, format)
        self.names = [str(n) for n in names]
        self._pos = {n: i for i, n in enumerate(self.names)}
        self.closed = False
        self.rows = 0
        self.events = 0
        if self.format == "hdf5":
            self._open_h5()
        else:
            _pyarrow()
            self._parts = self.path + ".parts"
            os.makedirs(self._parts, exist_ok=True)
            self._seq = self._next_seq()

    # -- HDF5 ------------------------------------------------------------------------------------------
    def _open_h5(self) -> None:
        h5py = _h5py()
        if os.path.exists(self.path):
            try:
                f = h5py.File(self.path, "a", libver="latest")
            except OSError as exc:
                if "already open for write" not in str(exc):
                    raise
                _recover_h5(self.path)  # its writer was killed: keep what it committed, in a clean file
                f = h5py.File(self.path, "a", libver="latest")
            old = [x.decode() if isinstance(x, bytes) else str(x) for x in f["names"][()]]
            if old != self.names:
                f.close()
                raise ValueError(f"{self.path} holds other PV names ({len(old)}); write a new file")
        else:
            f = h5py.File(self.path, "w", libver="latest")
            _h5_layout(f, self.names)
        f.swmr_mode = True  # from here on: single writer, readers see every committed append
        self._f = f
        self.rows = int(f["snapshots/committed"][0])
        self.events = int(f["events/committed"][0])
        self._sparse = int(f["snapshots/sparse/row"].shape[0])
        self._sparse_bytes = int(f["snapshots/sparse/bytes"].shape[0])
        self._event_bytes = int(f["events/bytes"].shape[0])

    def _put_bytes(self, ds: Any, start: int, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """Append the UTF-8 of *texts* to the byte dataset *ds* at *start*: (offsets, lengths, new end)."""
        raw = [t.encode("utf-8") for t in texts]
        lengths = np.asarray([len(r) for r in raw], dtype=np.int64)
        offsets = start + np.concatenate(([0], np.cumsum(lengths)[:-1])) if raw else np.zeros(0, dtype=np.int64)
        blob = np.frombuffer(b"".join(raw), dtype=np.uint8)
        if blob.size:
            self._grow(ds, start, blob)
        return offsets.astype(np.int64), lengths, start + int(blob.size)

    @staticmethod
    def _grow(ds: Any, start: int, data: Any) -> None:
        ds.resize((start + len(data),) + ds.shape[1:])
        ds[start:start + len(data)] = data
        ds.flush()

    def _h5_append(self, snap: Snapshot, cols: np.ndarray) -> None:
        s = self._f["snapshots"]
        r = self.rows
        n = len(self.names)
        row = {"value": np.full(n, np.nan), "status": np.full(n, -1, np.int16),
               "severity": np.full(n, -1, np.int16), "timestamp": np.full(n, np.nan), "ok": np.zeros(n, bool)}
        take = cols >= 0
        for key in row:
            row[key][cols[take]] = getattr(snap, key)[take]
        sparse = [(c, p) for c, v, ok, err in zip(cols.tolist(), snap.values, snap.ok.tolist(), snap.error)
                  if c >= 0 for p in [_payload(v) if ok else json.dumps(["error", err])] if p is not None]
        absent = np.ones(n, dtype=bool)
        absent[cols[take]] = False
        sparse += [(c, '["absent", null]') for c in np.flatnonzero(absent).tolist()]  # not in this snapshot
        for key, data in row.items():
            self._grow(s[key], r, data[None, :])
        if sparse:
            sp = s["sparse"]
            k = self._sparse
            off, length, self._sparse_bytes = self._put_bytes(sp["bytes"], self._sparse_bytes, [p for _, p in sparse])
            self._grow(sp["col"], k, np.asarray([c for c, _ in sparse], dtype="i8"))
            self._grow(sp["offset"], k, off)
            self._grow(sp["length"], k, length)
            self._grow(sp["row"], k, np.full(len(sparse), r, dtype="i8"))  # the row last: the entry is whole
            self._sparse += len(sparse)
        self._grow(s["time"], r, np.asarray([snap.created]))
        s["committed"][0] = r + 1  # last: readers never see a half-written append
        s["committed"].flush()

    def _h5_events(self, batch: Any, cols: np.ndarray, now: float) -> None:
        e = self._f["events"]
        m = self.events
        k = len(batch.index)
        texts = [_payload(v) or "" for v in batch.values] if batch.values is not None else [""] * k
        off, length, self._event_bytes = self._put_bytes(e["bytes"], self._event_bytes, texts)
        for key, data in (("index", cols), ("kind", batch.kind), ("value", batch.value),
                          ("timestamp", batch.timestamp), ("status", batch.status), ("severity", batch.severity),
                          ("time", np.full(k, now)), ("offset", off), ("length", length)):
            self._grow(e[key], m, np.asarray(data))
        e["committed"][0] = m + k
        e["committed"].flush()

    # -- Parquet ---------------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        seqs = [int(f.split(".")[0]) for f in os.listdir(self._parts) if f.endswith(".parquet")
                and f.split(".")[0].isdigit()]
        done = 0
        if os.path.exists(self.path):
            pa = _pyarrow()
            t = pa.parquet.read_table(self.path, columns=["seq"])
            done = int(max(t.column("seq").to_pylist(), default=-1)) + 1
        return max(seqs + [done - 1], default=-1) + 1

    def _pq_write(self, cols: dict[str, Any]) -> None:
        pa = _pyarrow()
        table = pa.table(cols, schema=_PQ_SCHEMA())
        with _replacing(os.path.join(self._parts, f"{self._seq:09d}.parquet"), ".parquet") as tmp:
            pa.parquet.write_table(table, tmp, row_group_size=max(len(table), 1))
        self._seq += 1

    # -- API -------------------------------------------------------------------------------------------
    def _cols(self, names: Sequence[Any]) -> np.ndarray:
        return np.asarray([self._pos.get(str(n), -1) for n in names], dtype=np.int64)

    def append(self, snap: Snapshot) -> None:
        """Append one snapshot (its PVs matched to this writer's names; others are ignored)."""
        if self.closed:
            raise ValueError("TimeSeriesWriter is closed")
        cols = self._cols(snap.names.tolist())
        if self.format == "hdf5":
            self._h5_append(snap, cols)
        else:
            keep = cols >= 0
            n = int(keep.sum())
            self._pq_write({
                "seq": np.full(n, self._seq, dtype=np.int64), "time": np.full(n, snap.created),
                "source": ["snapshot"] * n, "name": [str(x) for x in snap.names[keep].tolist()],
                "value": snap.value[keep], "status": snap.status[keep], "severity": snap.severity[keep],
                "timestamp": snap.timestamp[keep], "ok": snap.ok[keep], "kind": np.zeros(n, dtype=np.int8),
                "payload": [_payload(v) if ok else None for v, ok in zip(snap.values[keep], snap.ok[keep])],
                "error": [None if e is None else str(e) for e in snap.error[keep]]})
        self.rows += 1

    def append_batch(self, batch: Any, names: Sequence[str]) -> None:
        """Append one monitor :class:`~capar.monitor.Batch`; *names* are the Monitor's names (its
        ``index`` column points into them)."""
        if self.closed:
            raise ValueError("TimeSeriesWriter is closed")
        cols = self._cols([names[i] for i in batch.index.tolist()])
        if (cols < 0).any():  # events of PVs this writer does not hold
            keep = cols >= 0
            batch = type(batch)(index=batch.index[keep], value=batch.value[keep], timestamp=batch.timestamp[keep],
                                status=batch.status[keep], severity=batch.severity[keep], kind=batch.kind[keep],
                                values=None if batch.values is None else
                                [v for v, k in zip(batch.values, keep.tolist()) if k], overflow=batch.overflow)
            cols = cols[keep]
        if not len(cols):
            return
        now = time.time()
        if self.format == "hdf5":
            self._h5_events(batch, cols, now)
        else:
            k = len(batch.index)
            vals = batch.values if batch.values is not None else [None] * k
            self._pq_write({
                "seq": np.full(k, self._seq, dtype=np.int64), "time": np.full(k, now), "source": ["event"] * k,
                "name": [self.names[c] for c in cols.tolist()], "value": batch.value,
                "status": batch.status, "severity": batch.severity, "timestamp": batch.timestamp,
                "ok": batch.kind != 2, "kind": batch.kind.astype(np.int8), "payload": [_payload(v) for v in vals],
                "error": [None] * k})
        self.events += len(batch.index)

    def close(self) -> None:
        """Finish the file (Parquet: compact the parts into PATH, one row group per append)."""
        if self.closed:
            return
        self.closed = True
        if self.format == "hdf5":
            self._f.close()
            return
        _compact(self.path)

    def __enter__(self) -> "TimeSeriesWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _h5_layout(f: Any, names: Sequence[str], created: Optional[float] = None) -> None:
    """Create the empty datasets of a time series file (see module docstring)."""
    h5py = _h5py()
    n = len(names)
    f.attrs["format"] = SERIES_FORMAT
    f.attrs["created"] = time.time() if created is None else created
    f.create_dataset("names", data=np.asarray(list(names), dtype=object), dtype=h5py.string_dtype())
    s = f.create_group("snapshots")
    rows = 64 if n * 8 * 64 < 4 << 20 else 1
    for key, dt in (("value", "f8"), ("status", "i2"), ("severity", "i2"), ("timestamp", "f8"), ("ok", "bool")):
        s.create_dataset(key, shape=(0, n), maxshape=(None, n), dtype=dt, chunks=(rows, max(n, 1)),
                         compression="gzip", compression_opts=1, shuffle=True)
    s.create_dataset("time", shape=(0,), maxshape=(None,), dtype="f8", chunks=(1024,))
    sp = s.create_group("sparse")
    for key in ("row", "col", "offset", "length"):  # -1: allocated by a resize, never written
        sp.create_dataset(key, shape=(0,), maxshape=(None,), dtype="i8", chunks=(1024,), fillvalue=-1)
    sp.create_dataset("bytes", shape=(0,), maxshape=(None,), dtype="u1", chunks=(65536,))
    s.create_dataset("committed", data=np.zeros(1, dtype="i8"))
    e = f.create_group("events")
    for key, dt in (("index", "i8"), ("kind", "i1"), ("value", "f8"), ("timestamp", "f8"), ("status", "i2"),
                    ("severity", "i2"), ("time", "f8"), ("offset", "i8"), ("length", "i8")):
        e.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
    e.create_dataset("bytes", shape=(0,), maxshape=(None,), dtype="u1", chunks=(65536,))
    e.create_dataset("committed", data=np.zeros(1, dtype="i8"))


def _recover_h5(path: str) -> None:
    """A file whose writer died keeps HDF5's "open for writing" mark, so no writer may open it again (the
    ``h5clear`` tool is not part of h5py).  Copy what was committed into a fresh file and put it in place
    (atomically); readers could read the old one all along."""
    h5py = _h5py()
    with _replacing(path, ".h5") as tmp:
        with h5py.File(path, "r", swmr=True) as old, h5py.File(tmp, "w", libver="latest") as new:
            names = [x.decode() if isinstance(x, bytes) else str(x) for x in old["names"][()]]
            _h5_layout(new, names, float(old.attrs.get("created", time.time())))
            r = int(old["snapshots/committed"][0])
            for key in ("value", "status", "severity", "timestamp", "ok", "time"):
                _put(new["snapshots"][key], old["snapshots"][key][:r])
            sp_old, sp_new = old["snapshots/sparse"], new["snapshots/sparse"]
            row = sp_old["row"][()]
            keep = (row >= 0) & (row < r)
            for key in ("row", "col", "offset", "length"):
                _put(sp_new[key], sp_old[key][()][keep])
            end = int((sp_new["offset"][()] + sp_new["length"][()]).max(initial=0))
            _put(sp_new["bytes"], sp_old["bytes"][:end])
            new["snapshots/committed"][0] = r
            m = int(old["events/committed"][0])
            for key in ("index", "kind", "value", "timestamp", "status", "severity", "time", "offset", "length"):
                _put(new["events"][key], old["events"][key][:m])
            end = int((new["events/offset"][()] + new["events/length"][()]).max(initial=0))
            _put(new["events/bytes"], old["events/bytes"][:end])
            new["events/committed"][0] = m


def _put(ds: Any, data: np.ndarray) -> None:
    """Give the (resizable) dataset *ds* exactly the contents *data*."""
    ds.resize(data.shape)
    ds[...] = data


def _PQ_SCHEMA() -> Any:
    pa = _pyarrow()
    return pa.schema([("seq", pa.int64()), ("time", pa.float64()), ("source", pa.string()), ("name", pa.string()),
                      ("value", pa.float64()), ("status", pa.int16()), ("severity", pa.int16()),
                      ("timestamp", pa.float64()), ("ok", pa.bool_()), ("kind", pa.int8()),
                      ("payload", pa.string()), ("error", pa.string())],
                     metadata={b"format": SERIES_FORMAT.encode()})


def _parts(path: str) -> list[str]:
    d = path + ".parts"
    if not os.path.isdir(d):
        return []
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".parquet") and f[0] != "."]


def _compact(path: str) -> None:
    """Rewrite PATH with its parts appended (one row group per part), atomically, then drop the parts."""
    pa = _pyarrow()
    pq = pa.parquet
    parts = _parts(path)
    if not parts:
        return
    with _replacing(path, ".parquet") as tmp, pq.ParquetWriter(tmp, _PQ_SCHEMA()) as w:
        if os.path.exists(path):
            old = pq.ParquetFile(path)
            for g in range(old.num_row_groups):
                w.write_table(old.read_row_group(g))
        for p in parts:
            w.write_table(pq.read_table(p, schema=_PQ_SCHEMA()))
    for p in parts:  # after the rename: a crash here leaves duplicates, which read_series drops by seq
        os.unlink(p)
    try:
        os.rmdir(path + ".parts")
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------
# reading

def read_series(path: str | os.PathLike, names: Optional[Sequence[str]] = None, start: Optional[float] = None,
                stop: Optional[float] = None, events: bool = True, format: Optional[str] = None,
                as_frame: bool = True) -> Any:
    """Rows of *names* (default: all) written between *start* and *stop* (POSIX seconds of the append:
    the snapshot's ``created``, or when a monitor batch was appended; None: open-ended) as a pandas
    DataFrame sorted by time: ``time, source ('snapshot'|'event'), name, value (float), values (the Python
    value: text, arrays, numbers), status, severity, timestamp, ok, kind, error``.  *events*: include
    monitor events; *as_frame* False: a dict of numpy columns instead.  Works on a file still being written,
    and on one whose writer was killed."""
    import pandas as pd

    path = os.fspath(path)
    fmt = _format_of(path, format)
    lo = -math.inf if start is None else float(start)
    hi = math.inf if stop is None else float(stop)
    frames = _read_h5(path, names, lo, hi, events) if fmt == "hdf5" else _read_pq(path, names, lo, hi, events)
    cols = ["time", "source", "name", "value", "values", "status", "severity", "timestamp", "ok", "kind", "error"]
    if not frames:
        empty = pd.DataFrame({c: [] for c in cols})
        return empty if as_frame else {c: empty[c].to_numpy() for c in cols}
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["time", "source"], kind="stable", ignore_index=True)[cols]
    return df if as_frame else {c: df[c].to_numpy() for c in cols}


def _refresh(group: Any) -> None:
    """See what the (SWMR) writer has flushed since the file was opened, in every dataset of *group*."""
    for ds in group.values():
        if hasattr(ds, "refresh"):
            ds.refresh()


def _read_h5(path: str, names: Optional[Sequence[str]], lo: float, hi: float, events: bool) -> list:
    import pandas as pd

    h5py = _h5py()
    frames = []
    with h5py.File(path, "r", swmr=True) as f:
        all_names = [x.decode() if isinstance(x, bytes) else str(x) for x in f["names"][()]]
        pos = {n: i for i, n in enumerate(all_names)}
        want = np.asarray([pos[n] for n in names if n in pos] if names is not None else range(len(all_names)),
                          dtype=np.int64)
        s = f["snapshots"]
        _refresh(s)
        r = int(s["committed"][0])
        t = s["time"][:r]
        rows = np.flatnonzero((t >= lo) & (t <= hi))
        if rows.size and want.size:
            a, b = int(rows[0]), int(rows[-1]) + 1  # appends are in time order: one contiguous slab
            sel = np.sort(want)
            block = {k: s[k][a:b][:, sel] for k in ("value", "status", "severity", "timestamp", "ok")}
            nr, nc = b - a, len(sel)
            values = block["value"].astype(object)  # numbers as floats; text, arrays from the sparse table
            errs = np.full((nr, nc), None, dtype=object)
            present = np.ones((nr, nc), dtype=bool)
            sp = s["sparse"]
            _refresh(sp)
            srow = sp["row"][()]
            mask = (srow >= a) & (srow < b)  # b <= committed rows; -1: an entry never completed
            if mask.any():
                colpos = {int(c): j for j, c in enumerate(sel.tolist())}
                blob = sp["bytes"][()].tobytes()
                for rr, cc, o, n in zip(srow[mask].tolist(), sp["col"][()][mask].tolist(),
                                        sp["offset"][()][mask].tolist(), sp["length"][()][mask].tolist()):
                    j = colpos.get(int(cc))
                    if j is None:
                        continue
                    p = blob[o:o + n].decode("utf-8")
                    kind, payload = json.loads(p)
                    if kind == "absent":
                        present[rr - a, j] = False
                    elif kind == "error":
                        errs[rr - a, j] = payload
                    else:
                        values[rr - a, j] = _unpayload(p)
            values[~block["ok"]] = None
            frame = pd.DataFrame({
                "time": np.repeat(t[a:b], nc), "source": "snapshot",
                "name": np.tile(np.asarray([all_names[i] for i in sel.tolist()], dtype=object), nr),
                "value": block["value"].ravel(), "values": values.ravel(), "status": block["status"].ravel(),
                "severity": block["severity"].ravel(), "timestamp": block["timestamp"].ravel(),
                "ok": block["ok"].ravel(), "kind": np.zeros(nr * nc, dtype=np.int8), "error": errs.ravel()})
            frames.append(frame[present.ravel()] if not present.all() else frame)
        if events:
            e = f["events"]
            _refresh(e)
            m = int(e["committed"][0])
            et = e["time"][:m]
            idx = e["index"][:m]
            keep = (et >= lo) & (et <= hi) & np.isin(idx, want)
            if keep.any():
                k = np.flatnonzero(keep)
                val = e["value"][:m][k]
                kind = e["kind"][:m][k]
                blob = e["bytes"][()].tobytes()
                vals = [_unpayload(blob[o:o + n].decode("utf-8")) if n > 0 else (v if kd == 0 else None)
                        for o, n, v, kd in zip(e["offset"][:m][k].tolist(), e["length"][:m][k].tolist(),
                                               val.tolist(), kind.tolist())]
                frames.append(pd.DataFrame({
                    "time": et[k], "source": "event", "name": [all_names[i] for i in idx[k].tolist()],
                    "value": val, "values": vals, "status": e["status"][:m][k], "severity": e["severity"][:m][k],
                    "timestamp": e["timestamp"][:m][k], "ok": kind != 2, "kind": kind, "error": None}))
    return frames


def _read_pq(path: str, names: Optional[Sequence[str]], lo: float, hi: float, events: bool) -> list:
    pa = _pyarrow()
    pq = pa.parquet
    files = ([path] if os.path.exists(path) else []) + _parts(path)
    if not files:
        raise FileNotFoundError(path)
    tables = []
    for p in files:
        filters = [("time", ">=", lo), ("time", "<=", hi)]
        if names is not None:
            filters.append(("name", "in", list(names)))
        if not events:
            filters.append(("source", "=", "snapshot"))
        tables.append(pq.read_table(p, schema=_PQ_SCHEMA(), filters=filters))
    t = pa.concat_tables(tables)
    if len(tables) > 1:  # a crash between compaction and removing the parts: keep one copy of each append
        masks, owner = [], {}
        for k, tab in enumerate(tables):
            seq = tab.column("seq").to_numpy()
            m = np.ones(len(seq), dtype=bool)
            for sq in np.unique(seq).tolist():
                if owner.setdefault(sq, k) != k:
                    m[seq == sq] = False
            masks.append(m)
        t = t.filter(pa.array(np.concatenate(masks)))
    df = t.to_pandas()
    df["values"] = [_unpayload(p) if isinstance(p, str) and p else (None if not ok else v)
                    for p, v, ok in zip(df["payload"].tolist(), df["value"].tolist(), df["ok"].tolist())]
    return [df]
