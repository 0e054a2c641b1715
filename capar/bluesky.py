"""bluesky readables on capar's bulk path: a baseline of thousands of PVs read in one round trip.

::

    from bluesky import RunEngine, SupplementalData
    from capar.bluesky import GroupReadable

    baseline = GroupReadable(names, name="machine")          # one capar.Group behind it
    RE = RunEngine()
    RE.preprocessors.append(SupplementalData(baseline=[baseline]))

:class:`GroupReadable` follows bluesky's ``Readable`` protocol (``name``, ``parent``, ``read``, ``describe``):
``read()`` is one :meth:`capar.Group.get` (one deadline for every PV), ``describe()`` one CTRL-form bulk read
that gives every data key its dtype, shape, units, precision and limits.  Neither imports bluesky.

Threads: the RunEngine calls ``read``/``describe`` from its event-loop thread; capar attaches that thread to
its initial context on the first call.  One object must not be read from two threads at once.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .bulk import Group
from .ca import dbr
from .snapshot import Snapshot

__all__ = ["GroupReadable", "BaselineReadError", "data_key"]

log = logging.getLogger("capar.bluesky")

_ON_FAILURE = ("raise", "fill")
_LIMITS = (("control", "lower_ctrl_limit", "upper_ctrl_limit"), ("display", "lower_disp_limit", "upper_disp_limit"),
           ("warning", "lower_warning_limit", "upper_warning_limit"),
           ("alarm", "lower_alarm_limit", "upper_alarm_limit"))
_NUMERIC = (dbr.SHORT, dbr.FLOAT, dbr.CHAR, dbr.LONG, dbr.DOUBLE)


class BaselineReadError(RuntimeError):
    """Some PVs of a :class:`GroupReadable` did not connect or answer; ``failed`` lists (pvname, reason)."""

    def __init__(self, name: str, failed: list[tuple[str, Optional[str]]]) -> None:
        self.failed = failed
        shown = ", ".join(f"{pv} ({why})" for pv, why in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(f"{name}: {len(failed)} PV(s) failed: {shown}{more}")


def _number(x: Any) -> Optional[float]:
    """A finite float, or None (NaN: the server sent no such limit)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def data_key(pvname: str, native: int, value: Any, ctrl: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The bluesky/event-model data key of one PV.

    Parameters
    ----------
    pvname : str
        The PV; the source is ``"ca://" + pvname``.
    native : int
        Native DBR type (0..6, :mod:`capar.ca.dbr`), or -1 when unknown (never connected).
    value : the current value (its length gives an array's shape).
    ctrl : dict, optional
        CTRL metadata of the PV (``units``, ``precision``, ``*_limit`` and ``enum_strs``, as the ``ctrl``
        columns of a :class:`capar.Snapshot` hold them).

    Returns
    -------
    dict
        ``source``, ``dtype``, ``shape``, ``dtype_numpy`` and, where the server gave them, ``units``,
        ``precision``, ``limits`` (control/display/warning/alarm), and for enums ``choices`` (plus ophyd's
        own ``enum_strs``, ``lower_ctrl_limit``/``upper_ctrl_limit`` names).
    """
    ctrl = ctrl or {}
    desc: dict[str, Any] = {"source": "ca://" + pvname}
    array = isinstance(value, (np.ndarray, list, tuple))
    if native < 0:
        desc.update(dtype="number", shape=[], dtype_numpy="<f8")
        return desc
    npdt = np.dtype("<U40") if native == dbr.STRING else dbr.value_dtype(native)
    if array:
        desc.update(dtype="array", shape=[len(value)])
    elif native == dbr.STRING:
        desc.update(dtype="string", shape=[])
    elif native in (dbr.FLOAT, dbr.DOUBLE):
        desc.update(dtype="number", shape=[])
    else:  # SHORT, ENUM, CHAR, LONG
        desc.update(dtype="integer", shape=[])
    desc["dtype_numpy"] = npdt.str
    if native in _NUMERIC:
        units = ctrl.get("units")
        if units is not None:
            desc["units"] = units
        prec = ctrl.get("precision")
        if native in (dbr.FLOAT, dbr.DOUBLE) and prec is not None and int(prec) >= 0:
            desc["precision"] = int(prec)
        limits = {}
        for kind, lo, hi in _LIMITS:
            low, high = _number(ctrl.get(lo)), _number(ctrl.get(hi))
            if low is not None or high is not None:
                limits[kind] = {"low": low, "high": high}
        if limits:
            desc["limits"] = limits
        if "control" in limits:
            desc["lower_ctrl_limit"] = limits["control"]["low"]
            desc["upper_ctrl_limit"] = limits["control"]["high"]
    elif native == dbr.ENUM and ctrl.get("enum_strs") is not None:
        desc["choices"] = list(ctrl["enum_strs"])
        desc["enum_strs"] = tuple(ctrl["enum_strs"])
    return desc


class GroupReadable:
    """A bluesky ``Readable`` over many PVs, backed by ONE :class:`capar.Group` (e.g. a scan's baseline).

    Parameters
    ----------
    pvnames : iterable of str
        The PVs, one data key each.
    name : str
        The object's name (bluesky's ``object_keys``).
    keys : sequence of str, optional
        The data key of each PV (default: the PV name itself); they must be unique.
    timeout : float, seconds
        One deadline for every PV of a read.
    connection_timeout : float, seconds
        One deadline for connecting every PV (the first ``read``/``describe``, or :meth:`wait_for_connection`).
    on_failure : {'raise', 'fill'}
        What a PV that did not connect or answer does to ``read``/``describe``: ``'raise'`` (as an ophyd
        Signal would) raises :class:`BaselineReadError` naming every failed PV; ``'fill'`` logs a warning and
        gives that PV NaN (numbers) or None, ``alarm_severity`` -1 and the reason as ``message``.

    Attributes
    ----------
    last : Snapshot or None
        The Snapshot of the last ``read`` (per-PV ``ok``/``error`` columns).
    """

    def __init__(self, pvnames: Iterable[str], name: str = "baseline", *, keys: Optional[Sequence[str]] = None,
                 timeout: float = 2.0, connection_timeout: float = 5.0, on_failure: str = "raise") -> None:
        self.pvnames = [str(n) for n in pvnames]
        self.keys = list(self.pvnames) if keys is None else [str(k) for k in keys]
        if len(self.keys) != len(self.pvnames):
            raise ValueError(f"{len(self.keys)} keys for {len(self.pvnames)} PVs")
        if len(set(self.keys)) != len(self.keys):
            dup = sorted({k for k in self.keys if self.keys.count(k) > 1})[:5]
            raise ValueError(f"data keys must be unique; repeated: {dup}")
        if on_failure not in _ON_FAILURE:
            raise ValueError(f"on_failure must be one of {_ON_FAILURE}, not {on_failure!r}")
        self._name = name
        self.timeout = float(timeout)
        self.connection_timeout = float(connection_timeout)
        self.on_failure = on_failure
        self.last: Optional[Snapshot] = None
        self._group: Optional[Group] = None
        self._lock = threading.Lock()

    # -- bluesky protocol ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The object's name."""
        return self._name

    @property
    def parent(self) -> None:
        """Always None: a top-level object."""
        return None

    def read(self) -> dict[str, dict[str, Any]]:
        """Read every PV in one bulk read: ``{key: {"value", "timestamp", "alarm_severity"}}``.

        Timestamps are the IOC's (POSIX seconds).  Raises :class:`BaselineReadError` when a PV failed
        and ``on_failure='raise'``.
        """
        snap = self.group.get(timeout=self.timeout)
        self.last = snap
        values = snap.values.tolist()
        stamps = snap.timestamp.tolist()
        sevs = snap.severity.tolist()
        if not snap.ok.all():
            failed = self._failed(snap)
            natives = self.group.native_types()
            now = time.time()
            for i in np.flatnonzero(~snap.ok).tolist():
                values[i] = math.nan if natives[i] in (-1, dbr.FLOAT, dbr.DOUBLE) else None
                stamps[i] = now
            out = {k: {"value": v, "timestamp": t, "alarm_severity": s}
                   for k, v, t, s in zip(self.keys, values, stamps, sevs)}
            for i in np.flatnonzero(~snap.ok).tolist():
                out[self.keys[i]]["message"] = str(snap.error[i])
            log.warning("%s", BaselineReadError(self.name, failed))
            return out
        return {k: {"value": v, "timestamp": t, "alarm_severity": s}
                for k, v, t, s in zip(self.keys, values, stamps, sevs)}

    def describe(self) -> dict[str, dict[str, Any]]:
        """The data key of every PV (see :func:`data_key`), from one CTRL-form bulk read of all of them."""
        group = self.group
        natives = group.native_types()
        with Group(self.pvnames, form="ctrl", connection_timeout=self.connection_timeout) as ctrl_group:
            snap = ctrl_group.get(timeout=self.timeout)
        if not snap.ok.all():
            self._failed(snap)
        cols = snap.ctrl
        names = list(cols)
        rows = zip(*(cols[c].tolist() for c in names)) if names else ({} for _ in self.pvnames)
        out = {}
        for key, pv, native, value, row in zip(self.keys, self.pvnames, natives, snap.values.tolist(), rows):
            ctrl = dict(zip(names, row)) if names else {}
            out[key] = data_key(pv, native, value, ctrl)
        return out

    # -- connection ----------------------------------------------------------------------------------
    @property
    def group(self) -> Group:
        """The :class:`capar.Group` behind this object, connected on first use."""
        with self._lock:
            if self._group is None or self._group.closed:
                self._group = Group(self.pvnames, form="time", connection_timeout=self.connection_timeout)
            return self._group

    def wait_for_connection(self, timeout: Optional[float] = None) -> None:
        """Connect every PV now (ONE deadline: *timeout* seconds, default ``connection_timeout``).

        Raises :class:`BaselineReadError` naming the PVs that did not connect when ``on_failure='raise'``.
        """
        group = self.group
        if not group.connected.all():
            group.reconnect(timeout=self.connection_timeout if timeout is None else timeout)
        missing = [(pv, "not connected") for pv, t in zip(self.pvnames, group.native_types()) if t < 0]
        if missing and self.on_failure == "raise":
            raise BaselineReadError(self.name, missing)

    @property
    def connected(self) -> bool:
        """True when every PV is connected (False before the first use)."""
        g = self._group
        return g is not None and not g.closed and bool(g.connected.all())

    def close(self) -> None:
        """Clear the channels (a later read connects again)."""
        with self._lock:
            if self._group is not None:
                self._group.close()
                self._group = None

    destroy = close

    def __enter__(self) -> "GroupReadable":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.pvnames)

    def __repr__(self) -> str:
        return f"<GroupReadable {self.name!r}: {len(self)} PVs>"

    # -- helpers -----------------------------------------------------------------------------------------
    def _failed(self, snap: Snapshot) -> list[tuple[str, Optional[str]]]:
        failed = [(self.pvnames[i], snap.error[i]) for i in np.flatnonzero(~snap.ok).tolist()]
        if self.on_failure == "raise":
            raise BaselineReadError(self.name, failed)
        return failed
