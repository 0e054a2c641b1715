"""pyepics-compatible ``PV`` objects, the ``get_pv`` cache and the one-PV functions.

Threads: a PV's connection and monitor callbacks run on libca's threads (preemptive mode) and only update
the PV's ``_args`` dict and call the user's callbacks.  The PV cache is per process and per context and
lives in the context registry, so it is empty in a forked child.
"""
from __future__ import annotations

import copy
import logging
import math
import warnings
import time
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np

from . import ca
from .ca import dbr

__all__ = ["PV", "get_pv", "clear_pvcache", "caget", "caput", "cainfo", "camonitor", "camonitor_clear",
           "fmt_time"]

log = logging.getLogger("capar")

_TYPE_NAMES = {i: n.lower() for i, n in enumerate(dbr.NATIVE_NAMES)}
_TYPE_NAMES[dbr.SHORT] = "short"


def _type_name(ftype: Optional[int]) -> str:
    if ftype is None or ftype < 0:
        return "unknown"
    n = _TYPE_NAMES[dbr.native_type(ftype)]
    if dbr.is_time(ftype):
        return "time_" + n
    if ftype >= 28:
        return "ctrl_" + n
    return n


def fmt_time(tstamp: Optional[float] = None) -> str:
    """Timestamp as 'YYYY-mm-dd HH:MM:SS.ffffff' (local time)."""
    if tstamp is None:
        tstamp = time.time()
    frac = f"{tstamp % 1:.6f}"[1:]
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(tstamp)) + frac


def _pv_cache(context: Optional[int] = None) -> dict:
    """get_pv's cache: (pvname, form, context handle) -> PV, kept by the context *context* (default: the
    calling thread's; emptied by ``clear_cache``).  An unknown context has an empty one."""
    if context is None:
        return ca.context.current().pv_cache
    ctx = ca.context.registry().contexts.get(context)
    return ctx.pv_cache if ctx is not None else {}


def clear_pvcache() -> None:
    """Disconnect and forget every cached PV of this process."""
    for ctx in list(ca.context.registry().contexts.values()):
        for pv in list(ctx.pv_cache.values()):
            pv.disconnect()
        ctx.pv_cache.clear()


class PV:
    """A Process Variable: connection, value, metadata and callbacks (pyepics ``epics.PV``).

    Parameters
    ----------
    pvname : str
    callback : callable or list of callables, run on value changes with the PV's fields as keywords.
    form : 'native', 'time' (default) or 'ctrl'.
    auto_monitor : None (monitor when count < 65536), True, False, or a DBE mask.
    count : maximum number of elements to request.
    connection_callback : called as ``cb(pvname=, conn=, pv=)``.
    connection_timeout : float, seconds (default 2.0).
    access_callback : called as ``cb(read_access, write_access, pv=)`` on access rights changes.
    monitor_delta : float or None; for a scalar float/double PV, value callbacks are skipped while the
        value moved less than this from the last one delivered (a client-side deadband: capar, unlike the
        MDEL pyepics documents, never writes the record's MDEL, a setting every other client shares).
    """

    _fmtsca = "<PV '%(pvname)s', count=%(count)i, type=%(typefull)s, access=%(access)s>"
    _fmtarr = "<PV '%(pvname)s', count=%(count)i/%(nelm)i, type=%(typefull)s, access=%(access)s>"
    _fields = ("pvname", "value", "char_value", "status", "ftype", "chid", "host", "count", "access",
               "write_access", "read_access", "severity", "timestamp", "posixseconds", "nanoseconds",
               "precision", "units", "enum_strs", "upper_disp_limit", "lower_disp_limit",
               "upper_alarm_limit", "lower_alarm_limit", "lower_warning_limit", "upper_warning_limit",
               "upper_ctrl_limit", "lower_ctrl_limit", "monitor_delta")

    def __init__(self, pvname: str, callback: Any = None, form: str = "time", verbose: bool = False,
                 auto_monitor: Any = None, count: Optional[int] = None,
                 connection_callback: Optional[Callable] = None, connection_timeout: Optional[float] = None,
                 access_callback: Optional[Callable] = None, monitor_delta: Optional[float] = None) -> None:
        pvname = ca.check_name(pvname.strip() if isinstance(pvname, str) else pvname)
        self.pvname = pvname
        self.form = form.lower() if form in ("native", "time", "ctrl") else "time"
        self.verbose = verbose
        self._auto_monitor = auto_monitor
        self.ftype: Optional[int] = None
        self.connected = False
        self.connection_timeout = ca.DEFAULT_CONNECTION_TIMEOUT if connection_timeout is None \
            else connection_timeout
        self._user_max_count = count
        self._args: dict[str, Any] = {}.fromkeys(self._fields)
        self._args.update(pvname=pvname, count=count, nelm=-1, type="unknown", typefull="unknown",
                          access="unknown", monitor_delta=monitor_delta)
        self._monitor_last_value: Any = None
        self.connection_callbacks: list[Callable] = [connection_callback] if connection_callback else []
        self.access_callbacks: list[Callable] = [access_callback] if access_callback else []
        self.callbacks: dict[int, tuple[Callable, dict]] = {}
        if isinstance(callback, (tuple, list)):
            for i, cb in enumerate(callback):
                if callable(cb):
                    self.callbacks[i] = (cb, {})
        elif callable(callback):
            self.callbacks[0] = (callback, {})
        self._put_complete: Optional[bool] = None
        self._monref: Any = None
        self._monref_mask: Optional[int] = None
        self._conn_started = False
        self.chid: Any = None
        self.context = ca.context.ensure_context()
        self._epoch = ca.context.registry()
        self._create_channel()

    def _create_channel(self) -> None:
        self.chid = ca.create_channel(self.pvname, callback=self._on_connect)
        self._args["chid"] = self.chid
        ca.replace_access_rights_event(self.chid, callback=self._on_access_rights)
        if ca.isConnected(self.chid) and not self.connected:
            self._on_connect(pvname=self.pvname, chid=self.chid.value, conn=True)

    def _on_access_rights(self, read_access: bool, write_access: bool) -> None:
        self._args["read_access"], self._args["write_access"] = read_access, write_access
        self._args["access"] = ("no access", "read-only", "write-only", "read/write")[
            int(read_access) + 2 * int(write_access)]
        for cb in list(self.access_callbacks):
            if callable(cb):
                try:
                    cb(read_access, write_access, pv=self)
                except Exception:
                    log.exception("capar: access callback of %s raised", self.pvname)

    def force_connect(self, pvname: Optional[str] = None, chid: Any = None, conn: bool = True,
                      **kws: Any) -> None:
        """Run the connection handling now, as if libca had reported *conn* for the channel."""
        if chid is not None:
            self.chid = self._args["chid"] = chid if hasattr(chid, "value") else dbr.chid_t(int(chid))
        self._on_connect(pvname=pvname, chid=self.chid, conn=conn)

    # -- connection ----------------------------------------------------------------------------
    def _check_process(self) -> None:
        if self._epoch is not ca.context.registry():
            raise ca.ContextError(f"PV {self.pvname!r} was created in another process (before fork), or before "
                                  "finalize_libca(); create it again")

    def _on_connect(self, pvname: Optional[str] = None, chid: Any = None, conn: bool = True) -> None:
        if self.chid is None:
            return
        if conn:
            try:
                nelm = ca.element_count(self.chid)
                self._args["nelm"] = nelm
                self._args["count"] = min(nelm, self._user_max_count or nelm)
                self._args["host"] = ca.host_name(self.chid)
                self.ftype = ca.promote_type(self.chid, use_ctrl=self.form == "ctrl",
                                             use_time=self.form == "time")
                self._args["type"] = self._args["typefull"] = _type_name(self.ftype)
                self._args["ftype"] = self.ftype
                self.force_read_access_rights()
            except ca.CAError:
                return
        for cb in self.connection_callbacks:
            if callable(cb):
                try:
                    cb(pvname=self.pvname, conn=conn, pv=self)
                except Exception:
                    log.exception("capar: connection callback of %s raised", self.pvname)
        self.connected = conn
        if conn:
            self._check_auto_monitor()

    def force_read_access_rights(self) -> None:
        """Read access rights now."""
        self._args["access"] = ca.access(self.chid)
        self._args["read_access"] = ca.read_access(self.chid) == 1
        self._args["write_access"] = ca.write_access(self.chid) == 1

    def _clear_auto_monitor_subscription(self) -> None:
        if self._monref is None:
            return
        monref = self._monref
        self._monref = None
        self._monref_mask = None
        try:
            ca.clear_subscription(monref)
        except ca.CAError:
            pass

    def _check_auto_monitor(self) -> None:
        if not self.connected or self.chid is None:
            return
        count = self._args["count"]
        if count is None:
            return
        if self._auto_monitor is None:
            self._auto_monitor = count < ca.AUTOMONITOR_MAXLENGTH
        if not self._auto_monitor:
            self._clear_auto_monitor_subscription()
            return
        mask = ca.DEFAULT_SUBSCRIPTION_MASK if self._auto_monitor is True else int(self._auto_monitor)
        if self._monref is not None:
            if self._monref_mask == mask:
                return
            self._clear_auto_monitor_subscription()
        self._monref_mask = mask
        self._monref = ca.create_subscription(self.chid, use_ctrl=self.form == "ctrl",
                                              use_time=self.form == "time", callback=self._on_changes,
                                              mask=mask, count=self._user_max_count or 0)

    @property
    def auto_monitor(self) -> Any:
        """None, True/False, or the DBE mask used for the automatic subscription."""
        return self._auto_monitor

    @auto_monitor.setter
    def auto_monitor(self, value: Any) -> None:
        self._auto_monitor = value
        self._check_auto_monitor()

    @property
    def auto_monitor_mask(self) -> Optional[int]:
        return self._monref_mask

    def wait_for_connection(self, timeout: Optional[float] = None) -> bool:
        """Wait up to *timeout* seconds (default ``connection_timeout``) for the connection."""
        self._check_process()
        if not self.connected:
            timeout = ca.errors.seconds(self.connection_timeout if timeout is None else timeout)
            deadline = time.monotonic() + timeout
            ca.connect_channel(self.chid, timeout=timeout)
            # the connection callback may still be running in libca's thread
            while not self.connected and ca.isConnected(self.chid) and time.monotonic() < deadline + 1.0:
                time.sleep(0.001)
            self._conn_started = True
        return self.connected

    def connect(self, timeout: Optional[float] = None) -> bool:
        """Force a connection attempt; True when connected."""
        self.wait_for_connection(timeout)
        self._conn_started = True
        return self.connected and self.ftype is not None

    def clear_auto_monitor(self) -> None:
        """Turn auto-monitoring off."""
        self.auto_monitor = False

    def reconnect(self) -> bool:
        """Drop the monitor, run the connection handling again and wait for the connection (seconds:
        ``connection_timeout``); True when connected.  A PV whose channel was cleared (``ca.clear_cache``)
        gets a new channel."""
        self._check_process()
        self._clear_auto_monitor_subscription()
        self.connected = False
        self._conn_started = False
        if ca.get_cache(self.pvname) is None or not self._channel_known():
            self._create_channel()
        elif ca.isConnected(self.chid):
            self.force_connect()
        return self.wait_for_connection()

    def _channel_known(self) -> bool:
        try:
            ca.channel_entry(self.chid)
            return True
        except ca.CAError:
            return False

    def poll(self, evt: float = 1.e-4, iot: float = 1.0) -> None:
        """``ca.poll(evt, iot)`` (seconds)."""
        ca.poll(evt=evt, iot=iot)

    # -- values ----------------------------------------------------------------------------------
    def get(self, count: Optional[int] = None, as_string: bool = False, as_numpy: bool = True,
            timeout: Optional[float] = None, with_ctrlvars: bool = False, use_monitor: bool = True) -> Any:
        """Current value (None if not connected or timed out; see the log for why).

        timeout : float, seconds — default ``0.5 + log10(count)``.
        """
        data = self.get_with_metadata(count=count, as_string=as_string, as_numpy=as_numpy, timeout=timeout,
                                      with_ctrlvars=with_ctrlvars, use_monitor=use_monitor)
        return None if data is None else data["value"]

    def get_with_metadata(self, count: Optional[int] = None, as_string: bool = False, as_numpy: bool = True,
                          timeout: Optional[float] = None, with_ctrlvars: bool = False,
                          form: Optional[str] = None, use_monitor: bool = True,
                          as_namespace: bool = False) -> Any:
        """Value plus metadata as a dict (or SimpleNamespace); None when unavailable.

        timeout : float, seconds — default ``0.5 + log10(count)``.
        """
        if not self.wait_for_connection(timeout=timeout):
            log.warning("capar: PV %r not connected", self.pvname)
            return None
        if form is None:
            form, ftype = self.form, self.ftype
        else:
            ftype = ca.promote_type(self.chid, use_ctrl=form == "ctrl", use_time=form == "time")
        if with_ctrlvars and self._args.get("units") is None:
            self.get_ctrlvars()
        try:
            cached_length = len(self._args["value"])
        except TypeError:
            cached_length = 1
        if (not use_monitor or not self.auto_monitor or ftype != self.ftype or self._args["value"] is None
                or (count is not None and count > cached_length)):
            if count is None and self._args["count"] != self._args["nelm"]:
                count = self._args["count"]
            metad = ca.get_with_metadata(self.chid, ftype=ftype, count=count, timeout=timeout,
                                         as_numpy=as_numpy)
            if metad is None:
                return None
            self._args.update(**metad)
            if with_ctrlvars and form != "ctrl":
                metad = self._args.copy()
            val = metad["value"]
        else:
            metad = self._args.copy()
            val = self._args["value"]
        if as_string:
            metad["value"] = self._set_charval(val, force_long_string=True)
        elif self.nelm > 1 and val is not None:
            if np.ndim(val) == 0 and not isinstance(val, str):
                val = [val]
            if not isinstance(val, str):
                if as_numpy and not isinstance(val, np.ndarray):
                    val = np.asarray(val)
                elif not as_numpy and isinstance(val, np.ndarray):
                    val = val.tolist()
                if count is not None and count < len(val):
                    val = val[:count]
            metad["value"] = val
        return SimpleNamespace(**metad) if as_namespace else metad

    def put(self, value: Any, wait: bool = False, timeout: float = 30.0, use_complete: bool = False,
            callback: Optional[Callable] = None, callback_data: Any = None) -> Optional[int]:
        """Write *value* (enum strings accepted); returns 1, or -1 when a wait timed out.

        timeout : float, seconds to wait for completion when *wait* is True.
        """
        if not self.wait_for_connection():
            return None
        if self.ftype is not None and dbr.native_type(self.ftype) == dbr.ENUM and isinstance(value, str):
            if self._args["enum_strs"] is None:
                self.get_ctrlvars()
            strs = self._args["enum_strs"] or ()
            if value in strs:
                value = strs.index(value)
            else:  # pyepics raises here too (a ValueError from its ctypes buffer); say why
                try:
                    value = int(value, 0)
                except ValueError:
                    raise ValueError(f"{value!r} is not a state of {self.pvname} {tuple(strs)!r}") from None
        if use_complete and callback is None:
            callback = None
        self._put_complete = False if (use_complete or callback) else None

        def _put_callback(pvname: Optional[str] = None, **kws: Any) -> None:
            self._put_complete = True
            if callback is not None:
                callback(pvname=pvname, **kws)

        return ca.put(self.chid, value, wait=wait, timeout=timeout,
                      callback=_put_callback if (use_complete or callback) else None,
                      callback_data=callback_data)

    @property
    def put_complete(self) -> Optional[bool]:
        """Whether the last ``put(use_complete=True)`` has completed."""
        return self._put_complete

    def _set_charval(self, val: Any, call_ca: bool = True, force_long_string: bool = False) -> str:
        if val is None:
            self._args["char_value"] = "None"
            return "None"
        ftype = self.ftype if self.ftype is not None else dbr.DOUBLE
        ntype = dbr.native_type(ftype)
        if ntype == dbr.STRING:  # as pyepics: the value itself (a STRING array stays a list/array)
            self._args["char_value"] = val
            return val
        if ntype == dbr.CHAR and (self.nelm > 1 or force_long_string) and np.ndim(val) >= 1:
            raw = bytes(np.asarray(val, dtype=np.uint8).tolist())
            cval = dbr.c_string(raw).rstrip()
            self._args["char_value"] = cval
            return cval
        cval = repr(val)
        array = np.ndim(val) >= 1
        if array and len(val) > 1:
            cval = f"<array size={len(val)}, type={_type_name(ftype)}>"
        elif array and ntype in (dbr.FLOAT, dbr.DOUBLE, dbr.ENUM) and len(val) != 1:
            cval = str(val)  # an empty array: pyepics' formatting fails over to str(), '[]'
        elif array and ntype == dbr.ENUM:
            cval = str(val)
        elif ntype in (dbr.FLOAT, dbr.DOUBLE):
            if call_ca and self._args["precision"] is None:
                self.get_ctrlvars()
            x = val[0] if array else val
            try:
                prec = self._args["precision"]  # None (not read yet): str(value), as pyepics
                fmt = "%%.%df"
                if 4 < abs(int(math.log10(abs(x + 1.e-9)))):  # 0 -> log10(1e-9): %g, as pyepics
                    fmt = "%%.%dg"
                cval = (fmt % prec) % x
            except (ValueError, TypeError, ArithmeticError, OverflowError):
                cval = str(val)
        elif ntype == dbr.ENUM:
            if call_ca and self._args["enum_strs"] in ([], None):
                self.get_ctrlvars()
            try:
                cval = self._args["enum_strs"][val]
            except (TypeError, KeyError, IndexError):
                cval = str(val)
        self._args["char_value"] = cval
        return cval

    def _fetch_vars(self, fetch: Callable, timeout: float, warn: bool) -> Optional[dict]:
        if not self.wait_for_connection():
            return None
        kwds = fetch(self.chid, timeout=timeout, warn=warn)
        if kwds is not None:
            self._args.update(kwds)
        return kwds

    def get_ctrlvars(self, timeout: float = 5, warn: bool = True) -> Optional[dict]:
        """Fetch CTRL metadata (units, precision, limits, enum strings); timeout in seconds."""
        kwds = self._fetch_vars(ca.get_ctrlvars, timeout, warn)
        if self.connected:
            self.force_read_access_rights()
        return kwds

    def get_timevars(self, timeout: float = 5, warn: bool = True) -> Optional[dict]:
        """Fetch TIME metadata (status, severity, timestamp); timeout in seconds."""
        return self._fetch_vars(ca.get_timevars, timeout, warn)

    # -- callbacks -------------------------------------------------------------------------------
    def _on_changes(self, value: Any = None, **kwd: Any) -> None:
        delta = self._args["monitor_delta"]
        if delta is not None and self._args["count"] == 1 and isinstance(value, float):
            last = self._monitor_last_value
            if last is not None and abs(value - last) < delta:
                return  # client-side deadband (see the class docstring)
            self._monitor_last_value = value
        self._args.update(kwd)
        self._args["value"] = value
        self._args["timestamp"] = kwd.get("timestamp", time.time())
        self._args["posixseconds"] = kwd.get("posixseconds", 0)
        self._args["nanoseconds"] = kwd.get("nanoseconds", 0)
        self._set_charval(value, call_ca=False)
        if self.verbose:
            print(f"{self.pvname}: {self._args['char_value']} ({fmt_time(self._args['timestamp'])})")
        self.run_callbacks()

    def run_callbacks(self) -> None:
        """Run every user callback with the current data."""
        for index in sorted(self.callbacks):
            self.run_callback(index)

    def run_callback(self, index: int) -> None:
        """Run one callback: keywords are the PV fields, the callback's own kw and ``cb_info``."""
        try:
            fcn, kwargs = self.callbacks[index]
        except KeyError:
            return
        kwds = copy.copy(self._args)
        kwds.update(kwargs)
        kwds["cb_info"] = (index, self)
        if callable(fcn):
            try:
                fcn(**kwds)
            except Exception:
                log.exception("capar: callback %s of %s raised", index, self.pvname)

    def add_callback(self, callback: Optional[Callable] = None, index: Optional[int] = None,
                     run_now: bool = False, with_ctrlvars: bool = True, **kw: Any) -> Optional[int]:
        """Add a value-change callback; returns its index."""
        if callable(callback):
            if index is None:
                index = 1 + max(self.callbacks) if self.callbacks else 1
            self.callbacks[index] = (callback, kw)
        if with_ctrlvars and self.connected:
            self.get_ctrlvars()
        if run_now:
            self.get(as_string=True)
            if self.connected and index is not None:
                self.run_callback(index)
        return index

    def remove_callback(self, index: Optional[int] = None) -> None:
        """Remove a callback by index."""
        self.callbacks.pop(index, None)  # type: ignore[arg-type]

    def clear_callbacks(self, with_access_callback: bool = False, with_connect_callback: bool = False) -> None:
        """Remove every value callback (optionally the access/connection ones too)."""
        self.callbacks.clear()
        if with_access_callback:
            self.access_callbacks = []
        if with_connect_callback:
            self.connection_callbacks = []

    # -- properties ------------------------------------------------------------------------------
    def _getarg(self, arg: str) -> Any:
        if self._args.get(arg) is None and self.connected:
            if arg in ("status", "severity", "timestamp", "posixseconds", "nanoseconds"):
                self.get_timevars()
            else:
                self.get_ctrlvars()
        return self._args.get(arg)

    @property
    def value(self) -> Any:
        return self.get()

    @value.setter
    def value(self, val: Any) -> None:
        self.put(val)

    char_value = property(lambda self: self._getarg("char_value") if self._args["char_value"] is not None
                          else self._set_charval(self.get()))
    status = property(lambda self: self._getarg("status"))
    type = property(lambda self: self._args["type"])
    typefull = property(lambda self: self._args["typefull"])
    host = property(lambda self: self._getarg("host"))
    count = property(lambda self: self._args["count"] if self._args["count"] is not None else
                     self._args["nelm"])
    nelm = property(lambda self: self._args["nelm"] if self._args["nelm"] is not None else -1)
    read_access = property(lambda self: self._getarg("read_access"))
    write_access = property(lambda self: self._getarg("write_access"))
    access = property(lambda self: self._getarg("access"))
    severity = property(lambda self: self._getarg("severity"))
    timestamp = property(lambda self: self._getarg("timestamp"))
    posixseconds = property(lambda self: self._getarg("posixseconds"))
    nanoseconds = property(lambda self: self._getarg("nanoseconds"))
    precision = property(lambda self: self._getarg("precision"))
    units = property(lambda self: self._getarg("units"))
    enum_strs = property(lambda self: self._getarg("enum_strs"))
    upper_disp_limit = property(lambda self: self._getarg("upper_disp_limit"))
    lower_disp_limit = property(lambda self: self._getarg("lower_disp_limit"))
    upper_alarm_limit = property(lambda self: self._getarg("upper_alarm_limit"))
    lower_alarm_limit = property(lambda self: self._getarg("lower_alarm_limit"))
    upper_warning_limit = property(lambda self: self._getarg("upper_warning_limit"))
    lower_warning_limit = property(lambda self: self._getarg("lower_warning_limit"))
    upper_ctrl_limit = property(lambda self: self._getarg("upper_ctrl_limit"))
    lower_ctrl_limit = property(lambda self: self._getarg("lower_ctrl_limit"))

    def _getinfo(self) -> Optional[str]:
        """The ``cainfo`` paragraph, laid out as pyepics prints it."""
        if not self.wait_for_connection():
            return None
        self.get_ctrlvars()
        if self._args["value"] is None:
            self.get()
        mod, _, xtype = str(self._args["typefull"]).rpartition("_")
        mod = mod or "native"
        fmt = "{val:g}" if xtype in ("float", "double") else "{val:s}" if xtype in ("string", "char") else "{val:d}"
        value = self._args["value"]
        self._set_charval(value, call_ca=False)
        out = [f"== {self.pvname}  ({mod}_{xtype}) =="]
        fields: dict[str, str] = {}
        count = self.count or 0
        if count == 1:
            try:
                fields["value"] = fmt.format(val=value)
            except (ValueError, TypeError):
                fields["value"] = repr(value)
        else:
            shown: Any = ("unknown",)
            try:
                shown = ",".join(fmt.format(val=value[i]) for i in range(min(5, count)))
            except ValueError:
                shown = ",".join(repr(value[i]) for i in range(min(5, count)))
            except (TypeError, IndexError):
                pass
            fields["value"] = f" array  [{shown}{',....' if count > 10 else ''}]"
        for key in ("char_value", "count", "nelm", "type", "units", "precision", "host", "access",
                    "monitor_delta", "status", "char_status", "severity", "char_severity", "timestamp",
                    "posixseconds", "nanoseconds", "upper_ctrl_limit", "lower_ctrl_limit", "upper_disp_limit",
                    "lower_disp_limit", "upper_alarm_limit", "lower_alarm_limit", "upper_warning_limit",
                    "lower_warning_limit"):
            try:
                att = getattr(self, key)
            except Exception:
                continue
            if att is None:
                continue
            if key == "timestamp":
                att = f"{att:.3f} ({fmt_time(att)})"
            elif key == "char_value":
                att = f"'{att}'"
            fields[key] = str(att)
        for key, val in fields.items():
            out.append(f"   {key:20s} = {val}" if len(key) > 14 else f"   {key:15s} = {val}")
        if xtype == "enum":
            out.append("   enum strings: ")
            out.extend(f"       {i} = {name}" for i, name in enumerate(self.enum_strs or ()))
        if self._monref is not None:
            out.append(f"   PV is internally monitored, with {len(self.callbacks)} user-defined callbacks")
            for index in sorted(self.callbacks):
                cb = self.callbacks[index][0]
                code = getattr(cb, "__code__", None)
                out.append(f"      {getattr(cb, '__name__', repr(cb))} in file "
                           f"'{getattr(code, 'co_filename', '?')}'")
        else:
            out.append("   PV is NOT internally monitored")
        out.append("=============================")
        return "\n".join(out)

    @property
    def char_status(self) -> str:
        """The alarm status as its name (``'NO_ALARM'``, ``'HIHI'`` ...)."""
        return dbr.AlarmStatus(self.status).name

    @property
    def char_severity(self) -> str:
        """The alarm severity as its name (``'NO_ALARM'``, ``'MINOR'``, ``'MAJOR'``, ``'INVALID'``)."""
        return dbr.AlarmSeverity(self.severity).name

    @property
    def info(self) -> Optional[str]:
        """Multi-line description (cainfo)."""
        return self._getinfo()

    def __repr__(self) -> str:
        if not self.connected:
            return f"<PV '{self.pvname}': not connected>"
        fmt = self._fmtarr if self.nelm > 1 else self._fmtsca
        return fmt % dict(self._args, count=self.count or 0, nelm=self.nelm)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PV) and self.pvname == other.pvname and self.form == other.form

    __hash__ = object.__hash__

    @property
    def monitor_delta(self) -> Optional[float]:
        """The client-side deadband of value callbacks (None: every change is delivered)."""
        return self._args["monitor_delta"]

    def disconnect(self, deepclean: bool = True) -> None:
        """Clear the monitor and callbacks; the PV object is unusable afterwards."""
        self._clear_auto_monitor_subscription()
        self.callbacks.clear()
        self.connection_callbacks = []
        self.access_callbacks = []
        self.connected = False
        if deepclean and self.chid is not None:
            try:
                entry = ca.channel_entry(self.chid)
                if self._on_connect in entry.callbacks:
                    entry.callbacks.remove(self._on_connect)
                if self._on_access_rights in entry.access_callbacks:
                    entry.access_callbacks.remove(self._on_access_rights)
            except ca.CAError:
                pass
        cache = _pv_cache(self.context)
        key = (self.pvname, self.form, self.context)  # get_pv's key (O(1): 10k disconnects stay cheap)
        if cache.get(key) is self:
            del cache[key]


#: the class :func:`get_pv` creates (pyepics' ``epics.pv.default_pv_class``; a script may set a subclass)
default_pv_class = PV


def get_pv(pvname: str, form: str = "time", connect: bool = False, context: Any = None, timeout: float = 5.0,
           connection_callback: Optional[Callable] = None, access_callback: Optional[Callable] = None,
           callback: Optional[Callable] = None, verbose: bool = False, count: Optional[int] = None,
           auto_monitor: Any = None, monitor_delta: Optional[float] = None) -> PV:
    """A cached PV for (name, form, context), created if needed (pyepics ``get_pv``).

    timeout : float, seconds: the new PV's ``connection_timeout``, and the wait when *connect*.
    On a cache hit, as pyepics: *connection_callback* and *access_callback* are added (and called at once
    when connected), *callback* is added and run once, and a true *auto_monitor* turns monitoring on.
    *context* is deprecated (a warning): only PVs already cached for it are found.
    """
    if form not in ("native", "time", "ctrl"):
        form = "time"
    if context is not None:
        warnings.warn("The `context` kwarg for get_pv() is deprecated. New PVs will _not_ be created in the "
                      "requested context.", stacklevel=2)
        ctx = context
    else:
        ctx = ca.context.ensure_context()
    name = pvname.pvname if isinstance(pvname, PV) else pvname.strip() if isinstance(pvname, str) else pvname
    key = (name, form, ctx)
    cache = _pv_cache(ctx)
    pv = cache.get(key)
    if pv is not None and pv.chid is not None and not pv._channel_known():
        pv = None  # its channel was cleared under it (ca.clear_channel of the shared chid): a fresh PV
    if pv is None:
        if ctx != ca.context.ensure_context():
            raise RuntimeError("PV is not in cache for user-requested context")
        pv = default_pv_class(name, form=form, callback=callback, connection_callback=connection_callback,
                access_callback=access_callback, connection_timeout=timeout, verbose=verbose, count=count,
                auto_monitor=auto_monitor, monitor_delta=monitor_delta)
        cache[key] = pv
    else:
        if callable(connection_callback):
            if pv.connected:
                connection_callback(pvname=pv.pvname, conn=pv.connected, pv=pv)
            pv.connection_callbacks.append(connection_callback)
        if callable(access_callback):
            if pv.connected:
                access_callback(pv.read_access, pv.write_access, pv=pv)
            pv.access_callbacks.append(access_callback)
        if callable(callback):
            idx = pv.add_callback(callback)
            pv.run_callback(idx)  # type: ignore[arg-type]
        if auto_monitor and not pv.auto_monitor:
            pv.auto_monitor = auto_monitor
    if connect and not pv.wait_for_connection(timeout=timeout):
        log.warning("capar: cannot connect to %s (%.1f s)", name, timeout)
    return pv


def caget(pvname: str, as_string: bool = False, count: Optional[int] = None, as_numpy: bool = True,
          use_monitor: bool = True, timeout: float = 5.0, connection_timeout: float = 5.0) -> Any:
    """Value of one PV, or None (reason logged) when it does not connect or answer in time.

    timeout, connection_timeout : float, seconds.
    """
    start = time.monotonic()
    timeout = ca.errors.seconds(timeout)
    pv = get_pv(pvname, connect=True, timeout=ca.errors.seconds(connection_timeout, "connection_timeout"))
    if not pv.connected:
        return None
    if as_string:
        pv.get_ctrlvars()
    remaining = max(timeout - (time.monotonic() - start), 0.01)
    return pv.get(count=count, timeout=remaining, use_monitor=use_monitor, as_string=as_string,
                  as_numpy=as_numpy)


def caput(pvname: str, value: Any, wait: bool = False, timeout: float = 60.0,
          connection_timeout: float = 5.0) -> Optional[int]:
    """Write one PV: 1 on success, -1 when a wait timed out, None when the PV does not connect.

    timeout, connection_timeout : float, seconds.
    """
    start = time.monotonic()
    timeout = ca.errors.seconds(timeout)
    pv = get_pv(pvname, connect=True, timeout=ca.errors.seconds(connection_timeout, "connection_timeout"))
    if not pv.connected:
        return None
    return pv.put(value, wait=wait, timeout=max(timeout - (time.monotonic() - start), 0.01))


def cainfo(pvname: str, print_out: bool = True, timeout: float = 5.0,
           connection_timeout: float = 5.0) -> Optional[str]:
    """Describe a PV; printed (returns None) or returned as text with ``print_out=False``."""
    pv = get_pv(pvname, connect=True, timeout=connection_timeout)
    if not pv.connected:
        return None
    pv.get(timeout=timeout)
    text = pv.info
    if print_out:
        print(text)
        return None
    return text


def _monitors() -> dict:
    return ca.context.current().camonitors


def camonitor_clear(pvname: str) -> None:
    """Stop a camonitor on *pvname*."""
    pv = _monitors().pop(pvname, None)
    if pv is not None:
        pv.remove_callback(index=-999)


def camonitor(pvname: str, writer: Optional[Callable] = None, callback: Optional[Callable] = None,
              connection_timeout: float = 5.0, monitor_delta: Optional[float] = None) -> None:
    """Report every change of a PV until :func:`camonitor_clear` (pyepics ``camonitor``).

    Without *callback*, each change is written as ``"<pvname> <time> <char_value>"`` through *writer*
    (default: stdout); a *callback* replaces that line and gets the PV's fields as keywords.
    connection_timeout : float, seconds.  monitor_delta : float, see :class:`PV`.
    """
    if writer is None:
        writer = ca.write
    if callback is None:
        def callback(pvname: Optional[str] = None, value: Any = None, char_value: Any = None,
                     **kw: Any) -> None:
            if char_value is None:
                char_value = repr(value)
            writer(f"{pvname:.32s} {fmt_time(kw.get('timestamp'))} {char_value}")

    pv = get_pv(pvname, connect=True, timeout=connection_timeout, monitor_delta=monitor_delta)
    if pv.connected:
        pv.get()
        pv.add_callback(callback, index=-999, with_ctrlvars=True)
        _monitors()[pvname] = pv
