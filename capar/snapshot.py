"""Snapshot: the result of a bulk read — numpy columns in input order, plus save/load/diff.

Columns: ``names`` (str), ``value`` (float64; NaN where not numeric or failed), ``values`` (object: the
Python/numpy value of each PV — int/float, str, list of str, ndarray — or None), ``status`` and ``severity``
(int16; -1 when unknown), ``timestamp`` (float64 POSIX seconds; NaN when unknown), ``ok`` (bool), ``error``
(object: None or a short reason).  ``ctrl`` holds optional metadata columns (units, precision, limits,
enum_strs).  Files: ``.json``, ``.csv`` and ``.npz`` round-trip numbers, strings and arrays exactly.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np

__all__ = ["Snapshot", "Row", "SnapshotDiff", "SnapshotFormatError"]

_FORMAT = "capar-snapshot-1"
_FORMATS = ("json", "csv", "npz", "sav", "snap", "h5", "hdf5", "parquet")


class SnapshotFormatError(ValueError):
    """A snapshot file is missing, truncated or malformed (message names file and line)."""


@dataclass(frozen=True)
class Row:
    """One PV of a Snapshot."""

    name: str
    value: Any
    status: int
    severity: int
    timestamp: float
    ok: bool
    error: Optional[str]


@dataclass
class SnapshotDiff:
    """What differs between two snapshots (by PV name)."""

    changed: list = field(default_factory=list)   # (name, old, new)
    missing: list = field(default_factory=list)   # absent from other, or ok in only one of the two
    added: list = field(default_factory=list)     # in other only

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.added)

    def __len__(self) -> int:
        return len(self.changed) + len(self.missing) + len(self.added)

    def __str__(self) -> str:
        lines = [f"changed {n}: {_short(a)} -> {_short(b)}" for n, a, b in self.changed]
        lines += [f"missing {n}" for n in self.missing] + [f"added {n}" for n in self.added]
        return "\n".join(lines) if lines else "no differences"


def _short(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array(len={v.size}, dtype={v.dtype})"
    return repr(v)


class Snapshot:
    """Columns of a bulk read, in input order (duplicated names keep each position)."""

    def __init__(self, names: Sequence[str], value: np.ndarray, values: np.ndarray, status: np.ndarray,
                 severity: np.ndarray, timestamp: np.ndarray, ok: np.ndarray, error: np.ndarray,
                 ctrl: Optional[dict[str, np.ndarray]] = None, form: str = "time",
                 created: Optional[float] = None, elapsed: float = float("nan")) -> None:
        self.names = np.empty(len(names), dtype=object)
        self.names[:] = names
        self.value = value
        self.values = values
        self.status = status
        self.severity = severity
        self.timestamp = timestamp
        self.ok = ok
        self.error = error
        self.ctrl = ctrl or {}
        self.form = form
        import time as _t

        self.created = _t.time() if created is None else created
        self.elapsed = elapsed
        self._index: Optional[dict[str, int]] = None
        #: the IOC time stamps as EPICS-epoch nanoseconds (int64), when a Group read them (not saved in files)
        self.stamp_ns: Optional[np.ndarray] = None

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def empty(cls, names: Sequence[Any], form: str = "time") -> "Snapshot":
        """A snapshot of *names* with every PV failed (error filled in by the caller)."""
        n = len(names)
        return cls(
            names if isinstance(names, list) else [str(x) for x in names], np.full(n, np.nan), np.full(n, None, dtype=object),
            np.full(n, -1, dtype=np.int16), np.full(n, -1, dtype=np.int16), np.full(n, np.nan),
            np.zeros(n, dtype=bool), np.full(n, None, dtype=object), form=form)

    @classmethod
    def from_rows(cls, rows: Sequence[Row], form: str = "time") -> "Snapshot":
        snap = cls.empty([r.name for r in rows], form=form)
        for i, r in enumerate(rows):
            snap._set(i, r.value, r.status, r.severity, r.timestamp, r.ok, r.error)
        return snap

    _COLUMNS = ("value", "values", "status", "severity", "timestamp", "ok", "error")

    def take(self, idx: Any) -> "Snapshot":
        """The PVs at positions *idx* (indices, a slice or a boolean mask) as a new Snapshot, ctrl columns too."""
        names = [str(n) for n in np.atleast_1d(self.names[idx]).tolist()]
        cols = {k: np.atleast_1d(getattr(self, k)[idx]) for k in self._COLUMNS}
        return Snapshot(names, **cols, ctrl={k: np.atleast_1d(v[idx]) for k, v in self.ctrl.items()},
                        form=self.form, created=self.created, elapsed=self.elapsed)

    @classmethod
    def concat(cls, parts: Sequence["Snapshot"]) -> "Snapshot":
        """One Snapshot of *parts* in order (e.g. chunks of one read): created is the first part's, elapsed
        the sum; ctrl columns are kept where every part has them."""
        if not parts:
            raise ValueError("Snapshot.concat needs at least one Snapshot")
        if len(parts) == 1:
            return parts[0]
        names = [str(n) for p in parts for n in p.names.tolist()]
        cols = {k: np.concatenate([getattr(p, k) for p in parts]) for k in cls._COLUMNS}
        common = set(parts[0].ctrl).intersection(*(p.ctrl for p in parts[1:]))
        ctrl = {k: np.concatenate([p.ctrl[k] for p in parts]) for k in sorted(common)}
        return cls(names, **cols, ctrl=ctrl, form=parts[0].form, created=parts[0].created,
                   elapsed=float(sum(p.elapsed for p in parts)))

    def _set(self, i: int, value: Any, status: int, severity: int, timestamp: float, ok: bool,
             error: Optional[str]) -> None:
        self.values[i] = value
        self.value[i] = _as_float(value)
        self.status[i], self.severity[i], self.timestamp[i] = status, severity, timestamp
        self.ok[i], self.error[i] = ok, error

    # -- access ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Row]:
        for i in range(len(self)):
            yield self.row(i)

    def row(self, i: int) -> Row:
        return Row(str(self.names[i]), self.values[i], int(self.status[i]), int(self.severity[i]),
                   float(self.timestamp[i]), bool(self.ok[i]), self.error[i])

    def index(self, name: str) -> int:
        """Position of the first occurrence of *name* (KeyError when absent)."""
        if self._index is None:
            idx: dict[str, int] = {}
            for i, n in enumerate(self.names.tolist()):
                idx.setdefault(n, i)
            self._index = idx
        return self._index[name]

    def __getitem__(self, key: Any) -> Row:
        if isinstance(key, (int, np.integer)):
            return self.row(int(key))
        return self.row(self.index(key))

    def __contains__(self, name: object) -> bool:
        try:
            self.index(name)  # type: ignore[arg-type]
            return True
        except (KeyError, TypeError):
            return False

    @property
    def n_ok(self) -> int:
        return int(self.ok.sum())

    @property
    def failed(self) -> list[tuple[str, Optional[str]]]:
        """(name, error) of every PV that did not answer."""
        return [(str(self.names[i]), self.error[i]) for i in np.flatnonzero(~self.ok)]

    def __repr__(self) -> str:
        return f"<Snapshot {len(self)} PVs, {self.n_ok} ok, form={self.form}>"

    def to_dict(self) -> dict[str, Any]:
        """{name: value} (None for failed PVs; the last of duplicated names wins)."""
        return {str(n): (v if ok else None) for n, v, ok in zip(self.names, self.values, self.ok)}

    def to_pandas(self) -> Any:
        """A pandas DataFrame indexed by PV name (requires pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Snapshot.to_pandas() needs pandas: pip install pandas") from exc
        data = {"value": self.values, "status": self.status, "severity": self.severity,
                "timestamp": self.timestamp, "ok": self.ok, "error": self.error}
        data.update(self.ctrl)
        return pd.DataFrame(data, index=pd.Index(self.names, name="name"))

    # -- comparison ----------------------------------------------------------------------------------
    def diff(self, other: "Snapshot", rtol: float = 0.0, atol: float = 0.0) -> SnapshotDiff:
        """Changed (beyond rtol/atol for numbers), missing (not ok in either) and added PVs."""
        out = SnapshotDiff()
        mine = {str(n): i for i, n in enumerate(self.names)}
        theirs = {str(n): i for i, n in enumerate(other.names)}
        for name, i in mine.items():
            j = theirs.get(name)
            if j is None or bool(other.ok[j]) != bool(self.ok[i]):
                out.missing.append(name)
                continue
            if not self.ok[i]:
                continue  # failed in both: nothing to compare
            a, b = self.values[i], other.values[j]
            if not _equal(a, b, rtol, atol):
                out.changed.append((name, a, b))
        out.added = [n for n in theirs if n not in mine]
        return out

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, format: Optional[str] = None) -> str:
        """Write to *path*; format from *format* or the suffix (.json, .csv, .npz, .h5/.hdf5 (h5py), .parquet
        (pyarrow): everything, ctrl included, exactly; .sav: synApps autosave's text, values only; .snap: PSI
        snapshot's, values with units and precision). Atomic (temp + rename)."""
        path = os.fspath(path)
        fmt = (format or os.path.splitext(path)[1].lstrip(".")).lower()
        if fmt not in _FORMATS:
            raise ValueError(f"unknown snapshot format {fmt!r} for {path!r} "
                             "(use .json, .csv, .npz, .h5, .parquet, .sav or .snap)")
        d = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".capar-", suffix="." + fmt, dir=d)
        fh = os.fdopen(fd, "wb")
        try:
            with fh:
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the usual permissions
                if fmt == "npz":
                    self._save_npz(fh)
                elif fmt == "sav":
                    from .autosave import format_sav

                    fh.write(format_sav(self.names.tolist(), self.values.tolist(), self.ok.tolist()).encode())
                elif fmt == "snap":
                    fh.write(self.to_snap().encode("utf-8"))
                elif fmt in ("h5", "hdf5", "parquet"):
                    fh.close()
                    (self._save_h5 if fmt != "parquet" else self._save_parquet)(tmp)
                else:
                    text = self.to_json() if fmt == "json" else self.to_csv()
                    fh.write(text.encode("utf-8"))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, format: Optional[str] = None) -> "Snapshot":
        """Read a file written by :meth:`save`, a synApps autosave / pyepics ``.sav`` file or a PSI snapshot
        ``.snap`` file (SnapshotFormatError names file and line on bad input)."""
        path = os.fspath(path)
        fmt = (format or os.path.splitext(path)[1].lstrip(".")).lower()
        if not os.path.exists(path):
            raise SnapshotFormatError(f"{path}: no such file")
        if fmt not in _FORMATS:
            raise SnapshotFormatError(f"{path}: unknown snapshot format {fmt!r}")
        if os.path.isdir(path):
            raise SnapshotFormatError(f"{path}: is a directory")
        if fmt == "sav":
            from .autosave import read_sav

            rows = [Row(e.name, e.value, 0 if e.saved else -1, 0 if e.saved else -1, float("nan"), e.saved,
                        None if e.saved else "not saved: the saver could not read it") for e in read_sav(path)]
            return cls.from_rows(rows)
        if fmt in ("h5", "hdf5", "parquet"):
            try:
                return cls._load_h5(path) if fmt != "parquet" else cls._load_parquet(path)
            except SnapshotFormatError:
                raise
            except ImportError:
                raise
            except Exception as exc:
                raise SnapshotFormatError(f"{path}: unreadable {fmt} snapshot: {exc}") from None
        try:
            if fmt == "npz":
                return cls._load_npz(path)
            # newline="": a '\r' inside a quoted CSV field is data, not the end of a row
            with open(path, "r", encoding="utf-8", newline="") as fh:
                text = fh.read()
        except UnicodeDecodeError as exc:
            raise SnapshotFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise SnapshotFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if fmt == "snap":
            return cls.from_snap(text, source=path)
        return cls.from_json(text, source=path) if fmt == "json" else cls.from_csv(text, source=path)

    # -- columnar files (HDF5, Parquet) ----------------------------------------------------------------
    def _columnar(self) -> dict[str, Any]:
        """The columns of an HDF5/Parquet snapshot: native columns for tools, plus each value as its JSON
        (kind, payload) and the ctrl columns as JSON, so that loading is exact."""
        recs = self._records()
        return {"name": [r["name"] for r in recs], "value": self.value.astype(np.float64),
                "status": self.status.astype(np.int16), "severity": self.severity.astype(np.int16),
                "timestamp": self.timestamp.astype(np.float64), "ok": self.ok.astype(bool),
                "exact": [json.dumps([r["kind"], r["value"]], allow_nan=False) for r in recs],
                "error": [None if r["error"] is None else str(r["error"]) for r in recs]}

    def _meta(self) -> dict[str, str]:
        return {"format": _FORMAT, "form": self.form, "created": repr(self.created),
                "ctrl": json.dumps(_encode_ctrl(self.ctrl), allow_nan=False)}

    @classmethod
    def _from_columnar(cls, meta: dict[str, Any], cols: dict[str, Any], source: str) -> "Snapshot":
        if meta.get("format") != _FORMAT:
            raise SnapshotFormatError(f"{source}: not a capar snapshot")
        rows = []
        for i, name in enumerate(cols["name"]):
            kind, payload = json.loads(cols["exact"][i])
            err = cols["error"][i]
            rows.append(_row(str(name), kind, payload, int(cols["status"][i]), int(cols["severity"][i]),
                             float(cols["timestamp"][i]), bool(cols["ok"][i]),
                             None if err is None or (isinstance(err, float) and math.isnan(err)) else str(err)))
        snap = cls.from_rows(rows, form=str(meta.get("form", "time")))
        snap.created = float(meta.get("created", snap.created))
        snap.ctrl = _decode_ctrl(json.loads(meta.get("ctrl") or "{}"), len(rows))
        return snap

    def _save_h5(self, path: str) -> None:
        from .series import _h5py

        h5py = _h5py()
        cols = self._columnar()
        str_t = h5py.string_dtype()
        with h5py.File(path, "w") as f:
            for k, v in self._meta().items():
                f.attrs[k] = v
            for k, v in cols.items():
                if k in ("name", "exact", "error"):
                    f.create_dataset(k, data=np.asarray(["" if x is None else x for x in v], dtype=object),
                                     dtype=str_t)
                else:
                    f.create_dataset(k, data=v)
            f.create_dataset("error_none", data=np.asarray([x is None for x in cols["error"]], dtype=bool))

    @classmethod
    def _load_h5(cls, path: str) -> "Snapshot":
        from .series import _h5py

        h5py = _h5py()
        with h5py.File(path, "r") as f:
            meta = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}

            def text(k: str) -> list[str]:
                return [x.decode() if isinstance(x, bytes) else str(x) for x in f[k][()]]

            cols: dict[str, Any] = {k: f[k][()] for k in ("value", "status", "severity", "timestamp", "ok")}
            cols.update(name=text("name"), exact=text("exact"),
                        error=[None if none else e for e, none in zip(text("error"), f["error_none"][()])])
        return cls._from_columnar(meta, cols, path)

    def _save_parquet(self, path: str) -> None:
        from .series import _pyarrow

        pa = _pyarrow()
        table = pa.table(self._columnar())
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in self._meta().items()})
        pa.parquet.write_table(table, path)

    @classmethod
    def _load_parquet(cls, path: str) -> "Snapshot":
        from .series import _pyarrow

        pa = _pyarrow()
        table = pa.parquet.read_table(path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        return cls._from_columnar(meta, cols, path)

    # -- PSI snapshot (.snap) ------------------------------------------------------------------------
    def to_snap(self, **meta: Any) -> str:
        """The text of a PSI ``snapshot`` tool file: a ``#``-prefixed JSON metadata line (``save_time``,
        ``req_file_name``, ``labels``, ``comment``, ``machine_params``, and *meta*), then one
        ``NAME,{"val": value, "egu": units, "prec": precision}`` line per PV (units and precision when the
        snapshot has them) and a bare ``NAME`` line for a PV without value, as that tool writes them."""
        head = {"save_time": self.created, "req_file_name": "", "labels": [], "comment": "",
                "machine_params": {}, **meta}
        lines = ["#" + json.dumps(head)]
        units = self.ctrl.get("units")
        prec = self.ctrl.get("precision")
        for i, name in enumerate(self.names.tolist()):
            v = self.values[i]
            if not self.ok[i] or v is None:
                lines.append(str(name))
                continue
            data: dict[str, Any] = {"val": v.tolist() if isinstance(v, np.ndarray) else
                                    (v.item() if isinstance(v, np.generic) else v)}
            if units is not None and units[i] is not None:
                data["egu"] = units[i]
            if prec is not None and int(prec[i]) >= 0:
                data["prec"] = int(prec[i])
            lines.append(f"{name},{json.dumps(data)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_snap(cls, text: str, source: str = "<snap>") -> "Snapshot":
        """Parse a PSI ``snapshot`` file: metadata line, ``NAME,{"val": ...}`` lines (the older
        ``NAME,<json value>`` too) and bare ``NAME`` lines (no value: a failed PV).  ``egu``/``prec`` go to
        the ctrl columns ``units``/``precision``; ``save_time`` to :attr:`created`."""
        rows: list[Row] = []
        units: list[Optional[str]] = []
        prec: list[int] = []
        meta: dict[str, Any] = {}
        seen_meta = False
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.startswith("#"):
                if not seen_meta:
                    seen_meta = True
                    try:
                        meta = json.loads(line[1:]) if line[1:].strip() else {}
                    except json.JSONDecodeError as exc:
                        raise SnapshotFormatError(f"{source}:{lineno}: metadata is not JSON: {exc.msg}") from None
                continue
            if not line.strip():
                continue
            name, sep, rest = line.strip().partition(",")
            egu, p = None, -1
            if not sep:
                rows.append(Row(name, None, -1, -1, math.nan, False, "no value in the snapshot file"))
            else:
                try:
                    data = json.loads(rest)
                    if rest.lstrip().startswith("{"):
                        if not isinstance(data, dict) or "val" not in data:
                            raise ValueError("a JSON object without 'val'")
                        egu, p = data.get("egu"), data.get("prec")
                        p = -1 if p is None else int(p)
                        data = data["val"]
                    value = _from_snap_value(data)
                except (json.JSONDecodeError, *_BAD_DATA) as exc:
                    raise SnapshotFormatError(f"{source}:{lineno}: bad value for {name!r}: {exc}") from None
                ok = value is not None
                rows.append(Row(name, value, 0 if ok else -1, 0 if ok else -1, math.nan, ok,
                                None if ok else "no value in the snapshot file"))
            units.append(egu if isinstance(egu, str) else None)
            prec.append(p)
        if not seen_meta:
            raise SnapshotFormatError(f"{source}:1: not a PSI snapshot file (no '#' metadata line)")
        snap = cls.from_rows(rows)
        try:
            snap.created = float(meta.get("save_time", snap.created)) if isinstance(meta, dict) else snap.created
        except (TypeError, ValueError):
            pass
        if any(u is not None for u in units) or any(x >= 0 for x in prec):
            col = np.empty(len(units), dtype=object)
            col[:] = units
            snap.ctrl = {"units": col, "precision": np.asarray(prec, dtype=np.int16)}
        return snap

    def _records(self) -> list[dict[str, Any]]:
        recs = []
        for i in range(len(self)):
            kind, payload = _encode(self.values[i])
            recs.append({"name": str(self.names[i]), "kind": kind, "value": payload,
                         "status": int(self.status[i]), "severity": int(self.severity[i]),
                         "timestamp": _f2j(float(self.timestamp[i])), "ok": bool(self.ok[i]),
                         "error": self.error[i]})
        return recs

    def to_json(self) -> str:
        """JSON text (one record per PV; floats written with repr so they round-trip exactly)."""
        doc = {"format": _FORMAT, "form": self.form, "created": self.created, "pvs": self._records()}
        if self.ctrl:
            doc["ctrl"] = _encode_ctrl(self.ctrl)
        return json.dumps(doc, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> "Snapshot":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SnapshotFormatError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise SnapshotFormatError(f"{source}: JSON nested too deeply") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("pvs"), list):
            raise SnapshotFormatError(f"{source}:1: not a capar snapshot (format {_FORMAT!r} expected)")
        rows = []
        for k, rec in enumerate(doc["pvs"]):
            try:
                rows.append(_row(rec["name"], rec["kind"], rec["value"], rec["status"], rec["severity"],
                                 rec["timestamp"], rec["ok"], rec["error"]))
            except _BAD_DATA as exc:
                raise SnapshotFormatError(f"{source}: PV record {k + 1}: {exc!r}") from None
        try:
            snap = cls.from_rows(rows, form=str(doc.get("form", "time")))
            snap.created = float(doc.get("created", snap.created))
            snap.ctrl = _decode_ctrl(doc.get("ctrl"), len(rows))
        except _BAD_DATA as exc:
            raise SnapshotFormatError(f"{source}: bad header or columns: {exc!r}") from None
        return snap

    _CSV_HEADER = ["name", "kind", "value", "status", "severity", "timestamp", "ok", "error"]

    def to_csv(self) -> str:
        """CSV text: one row per PV; values as JSON; a final ``# end,N`` row marks a complete file."""
        buf = io.StringIO()
        recs = self._records()
        # the writer quotes '\n' but not a bare '\r' (not in our line terminator): quote everything then,
        # or the '\r' would end the row when the file is read back
        has_cr = any("\r" in r["name"] or "\r" in (r["error"] or "") for r in recs)
        w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL if has_cr else csv.QUOTE_MINIMAL)
        ctrl = _encode_ctrl(self.ctrl)
        w.writerow(["# " + _FORMAT, self.form, repr(self.created)])
        w.writerow(self._CSV_HEADER + [f"ctrl:{k}:{spec['dtype']}" for k, spec in ctrl.items()])
        for i, r in enumerate(recs):
            w.writerow([r["name"], r["kind"], json.dumps(r["value"], allow_nan=False), r["status"],
                        r["severity"], json.dumps(r["timestamp"]), int(r["ok"]),
                        "" if r["error"] is None else r["error"]]
                       + [json.dumps(spec["values"][i], allow_nan=False) for spec in ctrl.values()])
        w.writerow(["# end", len(self)])
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str, source: str = "<csv>") -> "Snapshot":
        reader = csv.reader(io.StringIO(text, newline=""))
        rows: list[Row] = []
        form, created, end = "time", None, None
        ctrl_cols: list[tuple[str, str]] = []  # (name, dtype) of the "ctrl:<name>:<dtype>" columns
        ctrl_vals: list[list[Any]] = []
        try:
            for rec in reader:
                lineno = reader.line_num
                if end is not None:
                    if rec:
                        raise SnapshotFormatError(f"{source}:{lineno}: data after the end marker")
                    continue
                if lineno == 1:
                    if not rec or rec[0] != "# " + _FORMAT:
                        raise SnapshotFormatError(f"{source}:1: not a capar snapshot CSV")
                    form = rec[1] if len(rec) > 1 else "time"
                    created = float(rec[2]) if len(rec) > 2 else None
                    continue
                if lineno == 2:
                    base, extra = rec[:len(cls._CSV_HEADER)], rec[len(cls._CSV_HEADER):]
                    if base != cls._CSV_HEADER or not all(c.startswith("ctrl:") and c.count(":") >= 2 for c in extra):
                        raise SnapshotFormatError(f"{source}:2: unexpected header {rec!r}")
                    ctrl_cols = [tuple(c[5:].rsplit(":", 1)) for c in extra]  # type: ignore[misc]
                    ctrl_vals = [[] for _ in ctrl_cols]
                    continue
                if not rec:
                    continue
                if rec[0] == "# end" and len(rec) == 2:  # data rows have 8 fields, whatever the PV name
                    end = int(rec[1])
                    continue
                try:
                    if len(rec) != len(cls._CSV_HEADER) + len(ctrl_cols):
                        raise ValueError(f"{len(rec)} fields, {len(cls._CSV_HEADER) + len(ctrl_cols)} expected")
                    name, kind, value, status, severity, ts, ok, error = rec[:len(cls._CSV_HEADER)]
                    rows.append(_row(name, kind, json.loads(value), status, severity, json.loads(ts),
                                     bool(int(ok)), error or None))
                    for col, cell in zip(ctrl_vals, rec[len(cls._CSV_HEADER):]):
                        col.append(json.loads(cell))
                except _BAD_DATA as exc:
                    raise SnapshotFormatError(f"{source}:{lineno}: bad row: {exc}") from None
            if end is None:
                raise SnapshotFormatError(f"{source}: truncated snapshot (no end marker after {len(rows)} rows)")
            if end != len(rows):
                raise SnapshotFormatError(f"{source}: {len(rows)} rows but the end marker says {end}")
            snap = cls.from_rows(rows, form=form)
            snap.ctrl = _decode_ctrl({k: {"dtype": dt, "values": v} for (k, dt), v in zip(ctrl_cols, ctrl_vals)},
                                     len(rows))
        except SnapshotFormatError:
            raise
        except (csv.Error, *_BAD_DATA) as exc:
            raise SnapshotFormatError(f"{source}: {exc}") from None
        if created is not None:
            snap.created = created
        return snap

    def _save_npz(self, fh: Any) -> None:
        kinds, scal_f, scal_s = [], np.full(len(self), np.nan), [""] * len(self)
        arrays: dict[str, list[np.ndarray]] = {}  # dtype -> the arrays of that dtype, packed into one member
        packed: dict[str, list] = {}              # PV index -> [dtype, offset, length]
        lists: dict[str, list] = {}
        for i, v in enumerate(self.values):
            if isinstance(v, np.generic):
                v = v.item()
                if isinstance(v, np.floating):  # longdouble has no Python equivalent: as JSON/CSV do
                    v = float(v)
            if isinstance(v, np.ndarray):
                kinds.append("p")
                flat = np.ascontiguousarray(v).reshape(-1)
                parts = arrays.setdefault(flat.dtype.str, [])
                packed[str(i)] = [flat.dtype.str, int(sum(p.size for p in parts)), int(flat.size), list(v.shape)]
                parts.append(flat)
            elif isinstance(v, bool):
                kinds.append("b")
                scal_f[i] = float(v)
            elif isinstance(v, int):
                kinds.append("i")
                scal_s[i] = str(v)
            elif isinstance(v, float):
                kinds.append("f")
                scal_f[i] = v
            elif isinstance(v, str):
                kinds.append("s")
                scal_s[i] = v
            elif isinstance(v, list):
                kinds.append("l")
                lists[str(i)] = [str(x) for x in v]
            else:
                kinds.append("n")
        # text travels as JSON inside the archive: numpy 'U' arrays would drop trailing NUL characters
        dtypes = sorted(arrays)
        text = json.dumps({"names": [str(n) for n in self.names.tolist()], "scal_s": scal_s, "lists": lists,
                           "error": [None if e is None else str(e) for e in self.error], "packed": packed,
                           "dtypes": dtypes, "ctrl": _encode_ctrl(self.ctrl)}, allow_nan=False)
        members = {f"pack_{j}": np.concatenate(arrays[d]) for j, d in enumerate(dtypes)}
        np.savez_compressed(fh, _format=np.asarray(_FORMAT), form=np.asarray(self.form),
                            created=np.asarray(self.created), text=np.asarray(text),
                            kinds=np.asarray(kinds, dtype=str), scal_f=scal_f, status=self.status,
                            severity=self.severity, timestamp=self.timestamp, ok=self.ok, **members)

    @classmethod
    def _load_npz(cls, path: str) -> "Snapshot":
        try:
            # our own file object: numpy leaves its handle open when the archive is not a zip at all
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                if str(z["_format"]) != _FORMAT:
                    raise SnapshotFormatError(f"{path}: not a capar snapshot")
                text = json.loads(str(z["text"]))
                names = [str(n) for n in text["names"]]
                snap = cls.empty(names, form=str(z["form"]))
                snap.created = float(z["created"])
                kinds, sf, ss, lists = z["kinds"].tolist(), z["scal_f"], text["scal_s"], text["lists"]
                packs = {d: z[f"pack_{j}"] for j, d in enumerate(text.get("dtypes", []))}
                for i, k in enumerate(kinds):
                    if k == "a":  # capar before the packed layout: one member per array
                        v: Any = z[f"arr_{i}"]
                    elif k == "p":
                        d, off, size, shape = text["packed"][str(i)]
                        v = packs[d][off:off + size].reshape(shape).copy()
                    elif k == "l":
                        v = [str(x) for x in lists[str(i)]]
                    elif k == "i":
                        v = int(ss[i])
                    elif k == "b":
                        v = bool(sf[i])
                    elif k == "f":
                        v = float(sf[i])
                    elif k == "s":
                        v = str(ss[i])
                    else:
                        v = None
                    snap.values[i] = v
                    snap.value[i] = _as_float(v)
                snap.status[:] = z["status"]
                snap.severity[:] = z["severity"]
                snap.timestamp[:] = z["timestamp"]
                snap.ok[:] = z["ok"]
                snap.error[:] = [None if e is None else str(e) for e in text["error"]]
                snap.ctrl = _decode_ctrl(text.get("ctrl"), len(names))
                return snap
        except SnapshotFormatError:
            raise
        except Exception as exc:
            raise SnapshotFormatError(f"{path}: unreadable NPZ snapshot: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# value encoding shared by JSON and CSV

def _umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask is not thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_BAD_DATA = (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError, RecursionError)


def _row(name: Any, kind: Any, payload: Any, status: Any, severity: Any, ts: Any, ok: Any, error: Any) -> Row:
    """One Row from file fields, checked: types and int16 ranges (ValueError/TypeError otherwise)."""
    if not isinstance(kind, str):
        raise TypeError(f"value kind must be a string, not {kind!r}")
    st, sv = int(status), int(severity)
    if not (-32768 <= st <= 32767 and -32768 <= sv <= 32767):
        raise ValueError(f"status/severity out of range: {st}, {sv}")
    if error is not None and not isinstance(error, str):
        raise TypeError(f"error must be a string or null, not {error!r}")
    return Row(str(name), _decode(kind, payload), st, sv, _j2f(ts), bool(ok), error)


def _as_float(v: Any) -> float:
    if isinstance(v, (bool, int, float, np.integer, np.floating)):
        try:
            return float(v)
        except OverflowError:
            return math.nan
    return math.nan


def _f2j(x: float) -> Any:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _j2f(x: Any) -> float:
    if isinstance(x, str):
        return float(x)
    return float(x)


def _encode(v: Any) -> tuple[str, Any]:
    if v is None:
        return "none", None
    if isinstance(v, (bool, np.bool_)):
        return "bool", bool(v)
    if isinstance(v, (int, np.integer)):
        return "int", int(v)
    if isinstance(v, (float, np.floating)):
        return "float", _f2j(float(v))
    if isinstance(v, str):
        return "str", v
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "f":
            return f"array:{v.dtype.str}", [_f2j(x) for x in v.tolist()]
        if v.dtype.kind in "US":
            return f"array:{v.dtype.str}", [str(x) for x in v.tolist()]
        return f"array:{v.dtype.str}", v.tolist()
    if isinstance(v, (list, tuple)):
        return "list", [str(x) for x in v]
    raise TypeError(f"cannot store a {type(v).__name__} in a snapshot")


def _decode(kind: str, payload: Any) -> Any:
    if kind == "none":
        return None
    if kind == "bool":
        return bool(payload)
    if kind == "int":
        return int(payload)
    if kind == "float":
        return _j2f(payload)
    if kind == "str":
        if not isinstance(payload, str):
            raise ValueError("str value expected")
        return payload
    if kind == "list":
        return [str(x) for x in payload]
    if kind.startswith("array:"):
        dt = np.dtype(kind[6:])
        if dt.kind == "f":
            return np.asarray([_j2f(x) for x in payload], dtype=dt)
        return np.asarray(payload, dtype=dt)
    raise ValueError(f"unknown value kind {kind!r}")


def _from_snap_value(v: Any) -> Any:
    """A value of a .snap line: numbers and text as they are, a list of text as a list (capar's string
    arrays), a list of numbers as a numpy array (int64 or float64, as the tool's numpy.asarray)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        if all(isinstance(x, str) for x in v) and v:
            return list(v)
        if any(isinstance(x, (list, dict)) for x in v):
            raise ValueError("nested arrays are not supported")
        return np.asarray([_j2f(x) if isinstance(x, str) else x for x in v],
                          dtype=np.float64 if any(isinstance(x, (float, str)) for x in v) else np.int64)
    raise ValueError(f"unsupported value {v!r:.40}")


def _encode_cell(v: Any) -> Any:
    """One element of an object ctrl column (units text, enum-string tuple, None) as JSON."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, tuple):
        return {"tuple": [_encode_cell(x) for x in v]}
    kind, payload = _encode(v)
    return {"kind": kind, "value": payload}


def _decode_cell(x: Any) -> Any:
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, dict) and isinstance(x.get("tuple"), list):
        return tuple(_decode_cell(e) for e in x["tuple"])
    if isinstance(x, dict) and "kind" in x:
        return _decode(str(x["kind"]), x.get("value"))
    raise ValueError(f"bad ctrl cell {x!r:.60}")


def _encode_ctrl(ctrl: dict[str, np.ndarray]) -> dict[str, Any]:
    """The ctrl columns (units, precision, limits, enum strings) as JSON: {name: {dtype, values}}."""
    out: dict[str, Any] = {}
    for k, col in ctrl.items():
        col = np.asarray(col)
        if col.dtype == object:
            out[str(k)] = {"dtype": "object", "values": [_encode_cell(v) for v in col.tolist()]}
        elif col.dtype.kind == "f":
            out[str(k)] = {"dtype": col.dtype.str, "values": [_f2j(float(v)) for v in col.tolist()]}
        elif col.dtype.kind in "biu":
            out[str(k)] = {"dtype": col.dtype.str, "values": [int(v) for v in col.tolist()]}
        else:
            raise TypeError(f"cannot store ctrl column {k!r} of dtype {col.dtype}")
    return out


def _decode_ctrl(doc: Any, n: int) -> dict[str, np.ndarray]:
    if not doc:
        return {}
    if not isinstance(doc, dict):
        raise ValueError("ctrl must be an object")
    out: dict[str, np.ndarray] = {}
    for k, spec in doc.items():
        vals = spec["values"]
        if not isinstance(vals, list) or len(vals) != n:
            raise ValueError(f"ctrl column {k!r}: {len(vals) if isinstance(vals, list) else '?'} values for {n} PVs")
        if spec["dtype"] == "object":
            col = np.empty(n, dtype=object)
            col[:] = [_decode_cell(v) for v in vals] if n else []
        else:
            dt = np.dtype(spec["dtype"])
            col = np.asarray([_j2f(v) for v in vals] if dt.kind == "f" else [int(v) for v in vals], dtype=dt)
        out[str(k)] = col
    return out


def _equal(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        try:
            aa, bb = np.asarray(a), np.asarray(b)
            if aa.shape != bb.shape:
                return False
            if aa.dtype.kind in "biuf" and bb.dtype.kind in "biuf":
                return bool(np.allclose(aa, bb, rtol=rtol, atol=atol, equal_nan=True))
            return bool(np.array_equal(aa, bb))
        except Exception:
            return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= atol + rtol * abs(b)
    return a == b
