"""pyepics-compatible channel functions: create/connect/get/get_complete/put/subscriptions/poll/pend_*.

Threads: every public function runs in the caller's thread, attached (automatically, see
:func:`capar.ca.context.ensure_context`) to a CA context.  The C callbacks (connection, access rights, get,
put, subscription event) are made per :class:`~capar.ca.context.CAContext` and run on libca's threads in
preemptive mode; they take the GIL, update one entry of their context's tables under that entry's
condition variable and return.  User callbacks run in that thread too, exactly as in pyepics, with no capar
lock held; an exception in a user callback is logged, never propagated into libca.
"""
from __future__ import annotations

import ctypes
import logging
import math
import re
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from . import dbr, errors
from .context import CAContext, ChannelEntry, PutRequest, Subscription, current, registry
from .errors import BadPVName, CAPutError, ChannelAccessException, ChannelAccessGetFailure
from .binding import AccessRightsCallback, ConnectionCallback, EventCallback, chid_t, evid_t

__all__ = [
    "DEFAULT_CONNECTION_TIMEOUT", "AUTOMONITOR_MAXLENGTH", "DEFAULT_SUBSCRIPTION_MASK", "MAX_PV_NAME_LENGTH",
    "BadValue", "check_name", "preemptive_setting",
    "create_channel", "connect_channel", "clear_channel", "name", "host_name", "element_count",
    "field_type", "state", "isConnected", "access", "read_access", "write_access", "promote_type",
    "get", "get_complete", "get_with_metadata", "get_complete_with_metadata", "get_ctrlvars",
    "get_timevars", "get_timestamp", "get_severity", "get_precision", "get_enum_strings", "put",
    "create_subscription", "clear_subscription", "poll", "pend_io", "pend_event", "flush_io", "test_io",
    "clear_cache", "message", "version", "default_get_timeout", "encode_value", "unpack_value",
    "channel_entry", "replace_access_rights_event",
]

log = logging.getLogger("capar")

DEFAULT_CONNECTION_TIMEOUT = 2.0  # seconds, as pyepics
AUTOMONITOR_MAXLENGTH = 65536      # elements, as pyepics
DEFAULT_SUBSCRIPTION_MASK = dbr.DBE_VALUE | dbr.DBE_ALARM
#: bytes of UTF-8: a CA search datagram (1024 bytes: version + search headers, 32 bytes, then the name with
#: its NUL padded to 8) carries at most 991; libca accepts a little more and then retries the unsendable
#: search forever, which stalls every other search of the context
MAX_PV_NAME_LENGTH = 991

_PENDING = object()
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")


class BadValue(TypeError, ValueError, CAPutError):
    """A value cannot be converted to the PV's type or shape (names the PV)."""


def preemptive_setting() -> bool:
    """Current value of ``capar.ca.PREEMPTIVE_CALLBACK`` (read when a context is created)."""
    return bool(registry().settings.preemptive)


def check_name(pvname: Any) -> str:
    """Validate a PV name before any network work: TypeError / BadPVName (a ValueError)."""
    if isinstance(pvname, bytes):
        try:
            pvname = pvname.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPVName(f"PV name is not valid UTF-8: {pvname!r}") from None
    if not isinstance(pvname, str):
        raise TypeError(f"PV name must be a str, not {type(pvname).__name__}: {pvname!r}")
    if not pvname:
        raise BadPVName("PV name is empty")
    try:
        size = len(pvname.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadPVName(f"PV name cannot be encoded as UTF-8 (lone surrogate?): {pvname[:40]!r}") from None
    if size > MAX_PV_NAME_LENGTH:
        raise BadPVName(f"PV name is {size} bytes long in UTF-8 (max {MAX_PV_NAME_LENGTH}): {pvname[:40]!r}...")
    if _BAD_CHARS.search(pvname):
        raise BadPVName(f"PV name contains whitespace or control characters: {pvname!r}")
    return pvname


def check_names(names: Any) -> tuple[list[Any], list[Optional[str]]]:
    """A list of PV names and, per name, None or ``"bad name: <reason>"`` (:func:`check_name`'s verdict).

    A single string instead of a list is a TypeError (a common slip: ``Group("PV")``).
    """
    if isinstance(names, (str, bytes)):
        raise TypeError("names must be a list of PV names, not a single string")
    names = list(names)
    errors_: list[Optional[str]] = []
    for n in names:
        try:
            check_name(n)
            errors_.append(None)
        except (TypeError, ValueError) as exc:
            errors_.append(f"bad name: {exc}")
    return names, errors_


_Entry = ChannelEntry  # the older name


# --------------------------------------------------------------------------------------------------
# C callbacks (run on libca threads), one set per context: each finds its target in its own context

def _connect_callback(ctx: CAContext) -> Any:
    channels, early, conn_lock = ctx.channels, ctx.early_connections, ctx.conn_lock

    def on_connect(args: Any) -> None:
        if ctx.closed:
            return
        conn = args.op == dbr.OP_CONN_UP
        with conn_lock:
            entry = channels.get(args.chid or 0)
            if entry is None:
                # libca may connect a channel before create_channel has registered it: keep the event
                early[args.chid or 0] = conn
                return
        with entry.cond:
            entry.conn = conn
            entry.cond.notify_all()
        entry.run_connection_callbacks(conn)

    return ConnectionCallback(on_connect)


def _get_callback(ctx: CAContext) -> Any:
    channels = ctx.channels

    def on_get(args: Any) -> None:
        entry = None if ctx.closed else channels.get(args.chid or 0)
        if entry is None:
            return
        ftype = int(args.usr or 0)
        if args.status != errors.ECA.NORMAL or not args.dbr:
            result: Any = ChannelAccessGetFailure(
                f"get of {entry.pvname!r} failed: {errors.eca_message(args.status)}", entry.chid, args.status)
        else:
            result = dbr.copy_event(args)
        with entry.cond:
            entry.get_results[ftype] = result
            entry.cond.notify_all()

    return EventCallback(on_get)


def _put_callback(ctx: CAContext) -> Any:
    puts = ctx.puts

    def on_put(args: Any) -> None:
        if ctx.closed:
            return
        rec = puts.pop(int(args.usr or 0), None)
        if rec is None:
            return
        rec.status = int(args.status)
        rec.done.set()
        fn = rec.callback
        if callable(fn):
            data = rec.callback_data
            kwargs = data if isinstance(data, dict) else {"data": data}
            try:
                fn(pvname=rec.pvname, **kwargs)
            except Exception:
                log.exception("capar: put callback for %s raised", rec.pvname)

    return EventCallback(on_put)


def _event_callback(ctx: CAContext) -> Any:
    subs, channels = ctx.subscriptions, ctx.channels

    def on_event(args: Any) -> None:
        if ctx.closed:
            return
        sub = subs.get(int(args.usr or 0))
        if sub is None or args.status != errors.ECA.NORMAL or not args.dbr:
            return
        entry = channels.get(args.chid or 0)
        if entry is None:
            return
        ftype, count, raw = dbr.copy_event(args)
        try:
            values, header = dbr.decode(ftype, count, raw)
            kwds: dict[str, Any] = {"ftype": ftype, "count": count, "chid": entry.chid, "pvname": entry.pvname}
            kwds.update(dbr.unpack_metadata(ftype, header))
            value = unpack_value(entry, ftype, values, count=count)
        except Exception:
            log.exception("capar: cannot decode monitor event of %s", entry.pvname)
            return
        fn = sub.callback
        if callable(fn):
            try:
                fn(value=value, **kwds)
            except Exception:
                log.exception("capar: monitor callback for %s raised", entry.pvname)

    return EventCallback(on_event)


def _access_callback(ctx: CAContext) -> Any:
    channels = ctx.channels

    def on_access(args: Any) -> None:
        entry = None if ctx.closed else channels.get(args.chid or 0)
        if entry is None:
            return
        read, write = bool(args.access & 1), bool(args.access & 2)
        for cb in list(entry.access_callbacks):
            try:
                cb(read, write)
            except Exception:
                log.exception("capar: access rights callback for %s raised", entry.pvname)

    return AccessRightsCallback(on_access)


def replace_access_rights_event(chid: Any, callback: Optional[Callable] = None) -> None:
    """Have ``callback(read_access, write_access)`` (two bools) called on the channel's access rights
    changes, and once now when it is connected (pyepics ``replace_access_rights_event``).

    Callbacks add up (as pyepics'); they run on libca's thread.
    """
    entry = channel_entry(chid)
    if callable(callback) and callback not in entry.access_callbacks:
        entry.access_callbacks.append(callback)
    ctx = entry.ctx
    ctx.attach().ca_replace_access_rights_event(entry.chid, ctx.c_callback("access", _access_callback))


# --------------------------------------------------------------------------------------------------
# channel table

def _chid_int(chid: Any) -> int:
    if isinstance(chid, int):
        return chid
    v = getattr(chid, "value", None)
    if isinstance(v, int):
        return v
    raise ChannelAccessException(f"not a valid chid: {chid!r}")


def channel_entry(chid: Any) -> ChannelEntry:
    """The entry of a chid created by capar in this process, in any of its contexts (ContextError otherwise)."""
    key = _chid_int(chid)
    entry = registry().find_channel(key)
    if entry is None:
        raise errors.ContextError(
            f"unknown channel id {key:#x}: cleared, or created in another process/context "
            "(channels do not survive fork; create them again in this process)")
    return entry


def create_channel(pvname: str, connect: bool = False, auto_cb: bool = True,
                   callback: Optional[Callable] = None) -> ctypes.c_long:
    """Create (or reuse, per context) a channel; returns the chid as ``ctypes.c_long`` like pyepics.

    connect : wait for the connection (``DEFAULT_CONNECTION_TIMEOUT`` seconds) before returning.
    auto_cb : install capar's connection callback (needed for *callback* and connection events).
    callback : called as ``callback(pvname=, chid=, conn=)`` on connection changes.
    """
    pvname = check_name(pvname)
    ctx = current()
    lib = ctx.lib
    later: list[Callable[[], None]] = []  # user callbacks run after the lock is released, never under it
    with ctx.lock:
        key = ctx.by_name.get(pvname)
        entry = ctx.channels.get(key) if key is not None else None
        if entry is None:
            use_cb = bool(auto_cb or callable(callback))
            chid = chid_t()
            cb = ctx.c_callback("connect", _connect_callback) if use_cb else None
            lib.ca_create_channel(pvname.encode("utf-8"), ctypes.cast(cb, ctypes.c_void_p) if cb else None,
                                  None, 0, ctypes.byref(chid))
            entry = ChannelEntry(chid.value, pvname, ctx, use_cb)
            if callable(callback):
                entry.callbacks.append(callback)
            with ctx.conn_lock:
                ctx.channels[entry.chid] = entry
                early = ctx.early_connections.pop(entry.chid, None)
            ctx.by_name[pvname] = entry.chid
            if not use_cb:
                entry.conn = lib.ca_state(entry.chid) == dbr.CS_CONN
            elif early is not None:
                with entry.cond:
                    entry.conn = early
                    entry.cond.notify_all()
                later.append(lambda e=entry, c=early: e.run_connection_callbacks(c))
        elif callable(callback) and callback not in entry.callbacks:
            entry.callbacks.append(callback)
            if entry.conn:
                later.append(lambda e=entry, cb=callback: cb(pvname=pvname, chid=e.chid, conn=True))
    for call in later:
        call()
    if connect:
        connect_channel(entry.chid)
    return ctypes.c_long(entry.chid)


def _is_conn(entry: ChannelEntry, lib: Any) -> bool:
    if entry.auto_cb:
        return entry.conn
    entry.conn = lib.ca_state(entry.chid) == dbr.CS_CONN
    return entry.conn


def _cond_waiter(cond: threading.Condition, done: Callable[[], bool]) -> Callable[[float], Any]:
    """A ``block`` for :meth:`CAContext.wait_until`: wait on *cond* until ``done()`` (at most *t* seconds)."""
    def block(t: float) -> None:
        with cond:
            cond.wait_for(done, timeout=t)
    return block


def connect_channel(chid: Any, timeout: Optional[float] = None, verbose: bool = False) -> bool:
    """Wait up to *timeout* seconds (default 2.0) for a channel to connect; returns the state."""
    entry = channel_entry(chid)
    lib = entry.ctx.attach()
    if _is_conn(entry, lib):
        return True
    timeout = errors.seconds(DEFAULT_CONNECTION_TIMEOUT if timeout is None else timeout)
    done = (lambda: entry.conn) if entry.auto_cb else (lambda: _is_conn(entry, lib))
    if entry.ctx.wait_until(done, time.monotonic() + timeout,
                            _cond_waiter(entry.cond, done) if entry.auto_cb else None):
        return True
    entry.ts = time.time()
    entry.failures += 1
    if verbose:
        log.warning("capar: %s not connected after %.2f s", entry.pvname, timeout)
    return False


def clear_channel(chid: Any) -> int:
    """Clear a channel (its subscriptions go with it); returns the ECA status.

    A channel capar no longer knows (already cleared, by this call or :func:`clear_cache`) is not handed
    to libca again: the result is ``ECA_BADCHID``.
    """
    key = _chid_int(chid)
    entry = registry().find_channel(key)
    if entry is None:
        return errors.ECA.BADCHID
    ctx = entry.ctx
    with ctx.teardown():
        with ctx.lock:
            with ctx.conn_lock:
                entry = ctx.channels.pop(key, None)
                ctx.early_connections.pop(key, None)
            if entry is None:
                return errors.ECA.BADCHID
            if ctx.by_name.get(entry.pvname) == key:
                del ctx.by_name[entry.pvname]
            for k in list(entry.subs):
                _forget_subscription(ctx, k)
        if not ctx.alive:
            return errors.ECA.NORMAL
        return ctx.lib.ca_clear_channel(key)


def _lib_of(chid: Any) -> tuple[ChannelEntry, Any]:
    """The entry of *chid* and libca, for calls on the channel itself (they need no attached context)."""
    entry = channel_entry(chid)
    ctx = entry.ctx
    if ctx.closed:
        ctx.check()  # raises ContextError
    return entry, ctx.lib


def name(chid: Any) -> str:
    """PV name of a channel."""
    return channel_entry(chid).pvname


def host_name(chid: Any) -> str:
    """``host:port`` of the server of a connected channel ("<disconnected>" otherwise)."""
    entry, lib = _lib_of(chid)
    return lib.ca_host_name(entry.chid).decode("utf-8", "replace")


def element_count(chid: Any) -> int:
    """Native element count (0 while disconnected)."""
    entry, lib = _lib_of(chid)
    return int(lib.ca_element_count(entry.chid))


def field_type(chid: Any) -> int:
    """Native DBR type (0..6), -1 while never connected."""
    entry, lib = _lib_of(chid)
    return int(lib.ca_field_type(entry.chid))


def state(chid: Any) -> int:
    """libca channel state (``dbr.CS_CONN`` == 2 when connected)."""
    entry, lib = _lib_of(chid)
    return int(lib.ca_state(entry.chid))


def isConnected(chid: Any) -> bool:
    """True when the channel is connected."""
    return state(chid) == dbr.CS_CONN


def read_access(chid: Any) -> int:
    """1 when the channel may be read."""
    entry, lib = _lib_of(chid)
    return int(lib.ca_read_access(entry.chid))


def write_access(chid: Any) -> int:
    """1 when the channel may be written."""
    entry, lib = _lib_of(chid)
    return int(lib.ca_write_access(entry.chid))


def access(chid: Any) -> str:
    """'no access', 'read-only', 'write-only' or 'read/write'."""
    acc = read_access(chid) + 2 * write_access(chid)
    return ("no access", "read-only", "write-only", "read/write")[acc]


def promote_type(chid: Any, use_time: bool = False, use_ctrl: bool = False) -> int:
    """Native type of a channel promoted to its TIME or CTRL form."""
    return dbr.promote_type(field_type(chid), use_time=use_time, use_ctrl=use_ctrl)


# --------------------------------------------------------------------------------------------------
# get

def default_get_timeout(count: int) -> float:
    """The documented default get timeout: ``0.5 + log10(count)`` seconds."""
    return 0.5 + math.log10(max(1, int(count)))


def _as_string(entry: ChannelEntry, ftype: int, values: np.ndarray, val: Any, count: int) -> Any:
    """pyepics' ``ca``-level string form of a value; *count* is the element count the caller asked for
    (0: all, pyepics' default).

    A char array reads as text, an array asked for with a count > 1 as ``'<array count=N, type=T>'``, any
    other value as ``str(value)`` (so a whole numeric array reads as numpy prints it, a STRING array as its
    list).  An ENUM scalar reads as its state string (pyepics only does so when ``count=1`` is passed).
    """
    native = dbr.native_type(ftype)
    if native == dbr.CHAR and count < AUTOMONITOR_MAXLENGTH:
        raw = bytes(np.asarray(values, dtype=np.uint8))
        return dbr.c_string(raw).strip()
    if native == dbr.ENUM and count <= 1 and np.ndim(val) == 0:
        strs = get_enum_strings(entry.chid)
        try:
            return strs[int(val)] if strs else str(val)
        except (IndexError, TypeError):
            return str(val)
    if count > 1:
        return f"<array count={count}, type={ftype}>"
    return str(val)


def unpack_value(entry: ChannelEntry, ftype: int, values: np.ndarray, count: Optional[int] = None,
                 as_numpy: bool = True) -> Any:
    """Python value of decoded DBR *values* with pyepics' unpacking rules."""
    n = len(values) if not count else min(int(count), len(values))
    values = values[:n]
    native = dbr.native_type(ftype)
    lib = entry.ctx.lib
    elem_count = int(lib.ca_element_count(entry.chid)) if entry.ctx.alive else n
    if native == dbr.STRING:
        out = [dbr.c_string(b) for b in values.tolist()]
        return out[0] if (len(out) == 1 and elem_count <= 1) else out
    if native == dbr.CHAR and elem_count > 1:
        return values.copy() if as_numpy else _ctypes_array(native, values)
    if n == 1:
        return values[0].item()
    return values.copy() if as_numpy else _ctypes_array(native, values)


def _ctypes_array(native: int, values: np.ndarray) -> ctypes.Array:
    """An array as pyepics' ``ca`` returns it for ``as_numpy=False``: a ctypes array (``dbr.Map`` type)."""
    flat = np.ascontiguousarray(values, dtype=dbr.value_dtype(native))
    return (dbr.Map[native] * len(flat)).from_buffer_copy(flat.tobytes())


def _request_get(entry: ChannelEntry, ftype: int, count: int) -> None:
    lib = entry.ctx.lib
    with entry.cond:
        if entry.get_results.get(ftype) is _PENDING:
            return
        entry.get_results[ftype] = _PENDING
    status = lib.ca_array_get_callback(ftype, count, entry.chid, entry.ctx.c_callback("get", _get_callback), ftype)
    if status != errors.ECA.NORMAL:
        with entry.cond:
            entry.get_results[ftype] = None
        errors.raise_for_status(status, "ca.get", entry.pvname)
    lib.ca_flush_io()


def _core_get_one(entry: ChannelEntry, core: Any, ftype: int, timeout: float) -> Any:
    """One element of *ftype* read by the compiled core: (type, 1, raw DBR bytes), the exception the
    regular path stores for a failed reply, or None when no reply came within *timeout* seconds (it is
    dropped).  Waits in slices of at most 0.1 s (Ctrl-C is seen between two)."""
    size = dbr.dbr_size_n(ftype, 1)
    raw = np.empty(size, dtype=np.uint8)
    chid = (ctypes.c_void_p * 1)(entry.chid)
    done = ctypes.c_uint8(0)
    status = ctypes.c_int32(0)
    req = core.check_alloc(core.get_start(core.fns, ftype, 1, ctypes.addressof(chid), raw.ctypes.data, size, size,
                                          ctypes.addressof(done), ctypes.addressof(status)), "a read request")
    deadline = time.monotonic() + timeout
    try:
        left = 1
        while left:
            remaining = deadline - time.monotonic()
            left = core.get_wait(core.fns, req, min(max(remaining, 0.0), 0.1), entry.ctx.preemptive)
            if remaining <= 0.1:
                break
    finally:
        finished = core.get_finish(req)
    if done.value:
        return ftype, 1, raw
    if status.value == errors.ECA.NORMAL:  # no reply in time
        if not finished:  # its callback is still due: freed by the context once it ran
            entry.ctx.orphan(_CoreRequest(core, req))
        return None
    if not finished:
        entry.ctx.orphan(_CoreRequest(core, req))
    return ChannelAccessGetFailure(f"get of {entry.pvname!r} failed: {errors.eca_message(status.value)}",
                                   entry.chid, status.value)


class _CoreRequest:
    """A compiled-core read request given up on before its callback ran (a context orphan): freed once
    the callback has run (``close`` is called by the context's next owner or ``clear_cache``)."""

    def __init__(self, core: Any, req: int) -> None:
        self.core, self.req = core, req

    def close(self) -> None:
        if self.req and not self.core.req_reap(self.req):
            return  # still due (or cancelled with its channel): a few bytes, left as they are
        self.req = 0


def _maybe_connect(entry: ChannelEntry, timeout: Optional[float]) -> bool:
    lib = entry.ctx.attach()
    if _is_conn(entry, lib):
        return True
    return connect_channel(entry.chid, timeout=DEFAULT_CONNECTION_TIMEOUT if timeout is None else timeout)


def get_with_metadata(chid: Any, ftype: Optional[int] = None, count: Optional[int] = None, wait: bool = True,
                      timeout: Optional[float] = None, as_string: bool = False,
                      as_numpy: bool = True) -> Optional[dict]:
    """Value and metadata of a channel as a dict (``'value'`` plus TIME/CTRL keys), or None.

    timeout : float, seconds — default ``0.5 + log10(count)``.  None is returned (and the reason
    logged) when the channel is not connected, ``wait=False`` was used, or the data did not arrive.
    """
    entry = channel_entry(chid)
    if timeout is not None:
        timeout = errors.seconds(timeout)
    if not _maybe_connect(entry, timeout):
        log.warning("capar: get(%r): channel not connected", entry.pvname)
        return None
    lib = entry.ctx.lib
    if ftype is None:
        ftype = int(lib.ca_field_type(entry.chid))
    if ftype < 0:
        log.warning("capar: get(%r): channel not connected", entry.pvname)
        return None
    nelm = int(lib.ca_element_count(entry.chid))
    req = 0 if count is None else max(0, min(int(count), nelm))
    core = entry.ctx.core
    if wait and core is not None and nelm == 1 and entry.get_results.get(ftype) is not _PENDING:
        # a scalar read by the compiled core: its C callback copies the reply and wakes this thread
        result = _core_get_one(entry, core, ftype, default_get_timeout(1) if timeout is None else timeout)
        if result is not None:
            with entry.cond:
                entry.get_results[ftype] = result  # what a later get_complete() returns, as after any get
            if isinstance(result, Exception):
                raise result
            return _unpack_result(entry, result, count, as_string, as_numpy)
        # no reply in time: a regular request, so that get_complete() can still wait for one
        _request_get(entry, ftype, req)
        log.warning("capar: get(%r) timed out", entry.pvname)
        return None
    _request_get(entry, ftype, req)
    if not wait:
        return None
    return get_complete_with_metadata(entry.chid, ftype=ftype, count=count, timeout=timeout,
                                      as_string=as_string, as_numpy=as_numpy)


def get(chid: Any, ftype: Optional[int] = None, count: Optional[int] = None, wait: bool = True,
        timeout: Optional[float] = None, as_string: bool = False, as_numpy: bool = True) -> Any:
    """Current value of a channel (None when incomplete: see :func:`get_complete`).

    timeout : float, seconds — default ``0.5 + log10(count)``.
    """
    info = get_with_metadata(chid, ftype=ftype, count=count, wait=wait, timeout=timeout,
                             as_string=as_string, as_numpy=as_numpy)
    return None if info is None else info["value"]


def get_complete_with_metadata(chid: Any, ftype: Optional[int] = None, count: Optional[int] = None,
                               timeout: Optional[float] = None, as_string: bool = False,
                               as_numpy: bool = True) -> Optional[dict]:
    """Wait for an earlier get request (no new request); dict with ``'value'`` or None.

    timeout : float, seconds — default ``0.5 + log10(count)``.
    """
    entry, lib = _lib_of(chid)
    if ftype is None:
        ftype = int(lib.ca_field_type(entry.chid))
    nelm = int(lib.ca_element_count(entry.chid))
    if timeout is None:
        timeout = default_get_timeout(nelm if count is None else min(int(count), max(nelm, 1)))
    timeout = errors.seconds(timeout)
    with entry.cond:
        result = entry.get_results.get(ftype)
    if result is None:
        log.warning("capar: get_complete(%r) without an earlier get()", entry.pvname)
        return None
    if result is _PENDING:
        def arrived() -> bool:
            return entry.get_results.get(ftype) is not _PENDING

        entry.ctx.wait_until(arrived, time.monotonic() + timeout, _cond_waiter(entry.cond, arrived), 0.005)
        with entry.cond:
            result = entry.get_results.get(ftype)
        if result is _PENDING:
            log.warning("capar: get(%r) timed out after %.2f s", entry.pvname, timeout)
            return None
    if isinstance(result, Exception):
        raise result
    return _unpack_result(entry, result, count, as_string, as_numpy)


def _unpack_result(entry: ChannelEntry, result: tuple[int, int, np.ndarray], count: Optional[int],
                   as_string: bool, as_numpy: bool) -> dict:
    """The dict of :func:`get_with_metadata` from one reply (type, count, raw DBR bytes)."""
    rtype, rcount, raw = result
    values, header = dbr.decode(rtype, rcount, raw)
    md = dbr.unpack_metadata(rtype, header)
    n = rcount if count is None else min(int(count), rcount)
    val = unpack_value(entry, rtype, values, count=n, as_numpy=as_numpy)
    if as_string:
        val = _as_string(entry, rtype, values[:n], val, 0 if count is None else n)
    md["value"] = val
    return md


def get_complete(chid: Any, ftype: Optional[int] = None, count: Optional[int] = None,
                 timeout: Optional[float] = None, as_string: bool = False, as_numpy: bool = True) -> Any:
    """Complete an earlier ``get(wait=False)`` (or timed-out get) without a new request; None if not done.

    timeout : float, seconds — default ``0.5 + log10(count)``.
    """
    info = get_complete_with_metadata(chid, ftype=ftype, count=count, timeout=timeout,
                                      as_string=as_string, as_numpy=as_numpy)
    return None if info is None else info["value"]


def _metavars(chid: Any, timeout: float, use_time: bool, use_ctrl: bool) -> Optional[dict]:
    entry = channel_entry(chid)
    if not _maybe_connect(entry, timeout):
        return None
    ftype = promote_type(entry.chid, use_time=use_time, use_ctrl=use_ctrl)
    md = get_with_metadata(entry.chid, ftype=ftype, count=1, timeout=timeout, wait=True)
    if md is not None:
        md.pop("value", None)
    return md


def get_ctrlvars(chid: Any, timeout: float = 5.0, warn: bool = True) -> Optional[dict]:
    """CTRL metadata (units, precision, limits, enum_strs, status, severity) of a channel, or None.

    timeout : float, seconds.
    """
    return _metavars(chid, timeout, use_time=False, use_ctrl=True)


def get_timevars(chid: Any, timeout: float = 5.0, warn: bool = True) -> Optional[dict]:
    """TIME metadata (status, severity, timestamp, posixseconds, nanoseconds) of a channel, or None.

    timeout : float, seconds.
    """
    return _metavars(chid, timeout, use_time=True, use_ctrl=False)


def get_timestamp(chid: Any) -> float:
    """POSIX timestamp of the last update (0 when unknown)."""
    return (get_timevars(chid) or {}).get("timestamp", 0)


def get_severity(chid: Any) -> int:
    """Alarm severity of a channel (0 when unknown)."""
    return (get_timevars(chid) or {}).get("severity", 0)


def get_precision(chid: Any) -> Optional[int]:
    """Display precision of FLOAT/DOUBLE channels, None for other types."""
    if field_type(chid) in (dbr.FLOAT, dbr.DOUBLE):
        return (get_ctrlvars(chid) or {}).get("precision", None)
    return None


def get_enum_strings(chid: Any) -> Optional[tuple]:
    """Enum state strings of ENUM channels, None for other types."""
    if field_type(chid) == dbr.ENUM:
        return (get_ctrlvars(chid) or {}).get("enum_strs", None)
    return None


# --------------------------------------------------------------------------------------------------
# put

def _int_range(dt: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dt)
    return int(info.min), int(info.max)


def encode_value(pvname: str, native: int, nelm: int, value: Any,
                 empty_fills: bool = True) -> tuple[int, int, np.ndarray]:
    """Convert a Python value for a put: (dbr type, count, contiguous buffer); BadValue names the PV.

    An empty sequence for an array PV: with *empty_fills* (pyepics' ``put``) NELM zeros or empty strings,
    else BadValue (Channel Access cannot write zero elements).
    """
    try:
        return _encode_value(pvname, native, nelm, value, empty_fills)
    except BadValue as exc:
        exc.pvname = pvname
        raise


def _encode_value(pvname: str, native: int, nelm: int, value: Any,
                  empty_fills: bool = True) -> tuple[int, int, np.ndarray]:
    nelm = max(int(nelm), 1)
    if value is None:
        raise BadValue(f"cannot put None to {pvname!r}")
    if native == dbr.CHAR and nelm > 1 and isinstance(value, (str, bytes)):
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if len(raw) >= nelm:
            raise BadValue(f"{len(raw)}-byte text does not fit {pvname!r} ({nelm} chars incl. NUL)")
        buf = np.frombuffer(raw + b"\0", dtype=np.uint8).copy()
        return dbr.CHAR, len(buf), buf
    if native in (dbr.STRING, dbr.ENUM) and (isinstance(value, (str, bytes)) or native == dbr.STRING):
        try:
            scalar = isinstance(value, (str, bytes)) or np.ndim(value) == 0
            items = [value] if scalar else list(value)
        except (TypeError, ValueError) as exc:
            raise BadValue(f"cannot put {type(value).__name__} to string PV {pvname!r}: {exc}") from None
        if not items and nelm > 1 and empty_fills:
            items = [""] * nelm  # as pyepics: an empty array clears every element
        if not items:
            raise BadValue(f"cannot put an empty array to {pvname!r}")
        if len(items) > nelm:
            raise BadValue(f"{len(items)} strings do not fit {pvname!r} ({nelm} elements)")
        buf = np.zeros(len(items), dtype="S40")
        for i, item in enumerate(items):
            if not isinstance(item, (str, bytes, int, float, np.number)):
                raise BadValue(f"cannot put {type(item).__name__} {item!r} to string PV {pvname!r}")
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            if len(raw) >= dbr.MAX_STRING_SIZE:
                raise BadValue(f"string of {len(raw)} bytes too long for {pvname!r} (max 39)")
            buf[i] = raw
        return dbr.STRING, len(items), buf
    dt = dbr.value_dtype(native)
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise BadValue(f"cannot put {type(value).__name__} to {pvname!r}: {exc}") from None
    if arr.dtype.kind in "US":
        try:
            arr = np.asarray([float(int(s, 0)) if dt.kind in "iu" and isinstance(s, str) and
                              s.strip().lower().startswith(("0x", "0o", "0b")) else float(s)
                              for s in arr.reshape(-1).tolist()]).reshape(arr.shape)
        except (TypeError, ValueError):
            raise BadValue(f"cannot put {value!r} to {dbr.NATIVE_NAMES[native]} PV {pvname!r}") from None
    if arr.dtype.kind not in "biuf":
        raise BadValue(f"cannot put {type(value).__name__} {value!r:.60} to "
                       f"{dbr.NATIVE_NAMES[native]} PV {pvname!r}")
    if arr.ndim > 1:
        raise BadValue(f"cannot put a {arr.ndim}-d array of shape {arr.shape} to {pvname!r}")
    flat = arr.reshape(-1)
    if flat.size > nelm:
        raise BadValue(f"{flat.size} elements do not fit {pvname!r} ({nelm} elements)")
    if flat.size == 0 and nelm > 1 and empty_fills:
        flat = np.zeros(nelm, dtype=dt)  # as pyepics: an empty array writes NELM zeros
    if flat.size == 0:
        raise BadValue(f"cannot put an empty array to {pvname!r}")
    kind = dbr.NATIVE_NAMES[native]
    with np.errstate(all="raise"):
        try:
            if dt.kind in "iu":
                if flat.dtype.kind == "f":
                    wide = flat.astype(np.float64) if flat.dtype.itemsize <= 8 else flat
                    if not np.all(np.isfinite(wide)):
                        raise BadValue(f"cannot put NaN/inf to integer PV {pvname!r}")
                    lo, hi = _int_range(dt)
                    if wide.min() < lo or wide.max() > hi:
                        raise BadValue(f"value out of range [{lo}, {hi}] for {kind} PV {pvname!r}")
                else:
                    lo, hi = _int_range(dt)
                    if int(flat.min()) < lo or int(flat.max()) > hi:
                        raise BadValue(f"value out of range [{lo}, {hi}] for {kind} PV {pvname!r}")
            elif flat.dtype.kind == "f" and flat.dtype.itemsize > dt.itemsize:
                finite = flat[np.isfinite(flat)]
                if finite.size and np.max(np.abs(finite)) > np.finfo(dt).max:
                    raise BadValue(f"value beyond the {kind} range (±{np.finfo(dt).max:.3g}) for PV {pvname!r}")
            buf = np.ascontiguousarray(flat, dtype=dt)
        except (FloatingPointError, OverflowError) as exc:
            raise BadValue(f"cannot convert {value!r:.60} to {kind} for PV {pvname!r}: {exc}") from None
    return native, int(buf.size), buf


def put(chid: Any, value: Any, wait: bool = False, timeout: float = 30, callback: Optional[Callable] = None,
        callback_data: Any = None, ftype: Optional[int] = None) -> int:
    """Write *value*; with *wait* block until processing completes (or *timeout* seconds).

    Returns 1 (ECA_NORMAL) on success, -1 when the wait timed out.  A callback (or ``wait``) uses
    ``ca_array_put_callback``; the callback is called as ``callback(pvname=, data=callback_data)``
    (or with *callback_data* as keyword arguments when it is a dict).
    """
    entry = channel_entry(chid)
    timeout = errors.seconds(30 if timeout is None else timeout)
    ctx = entry.ctx
    lib = ctx.attach()
    if not _is_conn(entry, lib) and not connect_channel(entry.chid, timeout=min(timeout, DEFAULT_CONNECTION_TIMEOUT)
                                                        if timeout else DEFAULT_CONNECTION_TIMEOUT):
        raise errors.ChannelNotConnected(f"put({entry.pvname!r}): channel not connected", pvname=entry.pvname)
    native = dbr.native_type(ftype if ftype is not None else int(lib.ca_field_type(entry.chid)))
    nelm = int(lib.ca_element_count(entry.chid))
    ptype, count, buf = encode_value(entry.pvname, native, nelm, value)
    if not lib.ca_write_access(entry.chid):
        raise CAPutError(f"put({entry.pvname!r}): no write access", errors.ECA.NOWTACCESS, entry.pvname)
    ptr = buf.ctypes.data
    if not (wait or callable(callback)):
        status = lib.ca_array_put(ptype, count, entry.chid, ptr)
        errors.raise_for_status(status, "ca.put", entry.pvname)
        lib.ca_flush_io()
        return status
    key = ctx.new_key()
    rec = PutRequest(entry.pvname, callback, callback_data, buf)
    ctx.puts[key] = rec
    status = lib.ca_array_put_callback(ptype, count, entry.chid, ptr, ctx.c_callback("put", _put_callback), key)
    if status != errors.ECA.NORMAL:
        ctx.puts.pop(key, None)
        errors.raise_for_status(status, "ca.put", entry.pvname)
    lib.ca_flush_io()
    if not wait:
        return status
    if not ctx.wait_until(rec.done.is_set, time.monotonic() + timeout, rec.done.wait, 0.005):
        log.warning("capar: put(%r, wait=True) not completed after %.2f s", entry.pvname, timeout)
        return -1
    if rec.status != errors.ECA.NORMAL:
        log.warning("capar: put(%r) completed with %s", entry.pvname, errors.eca_message(rec.status or 0))
        return -1
    return status


# --------------------------------------------------------------------------------------------------
# subscriptions

def create_subscription(chid: Any, use_time: bool = False, use_ctrl: bool = False, ftype: Optional[int] = None,
                        mask: Optional[int] = None, callback: Optional[Callable] = None, count: int = 0,
                        timeout: Optional[float] = None) -> tuple:
    """Subscribe to changes; *callback* gets ``value=`` plus pvname/chid/ftype/count and TIME/CTRL keys.

    Returns ``(callback_ref, user_arg_ref, event_id)`` like pyepics.
    timeout : float, seconds to wait for the connection when *ftype* is not given.
    """
    entry = channel_entry(chid)
    ctx = entry.ctx
    lib = ctx.attach()
    mask = mask or DEFAULT_SUBSCRIPTION_MASK
    if ftype is None:
        if not _is_conn(entry, lib) and not connect_channel(entry.chid, timeout=timeout):
            raise ChannelAccessException(
                f"create_subscription() timed out waiting {entry.pvname!r} to connect "
                f"({DEFAULT_CONNECTION_TIMEOUT if timeout is None else timeout} seconds)")
        ftype = int(lib.ca_field_type(entry.chid))
    ftype = dbr.promote_type(ftype, use_time=use_time, use_ctrl=use_ctrl)
    key = ctx.new_key()
    evid = evid_t()
    sub = Subscription(entry.chid, callback)
    cb = ctx.c_callback("event", _event_callback)
    with ctx.lock:
        ctx.subscriptions[key] = sub
        entry.subs.add(key)
    try:
        lib.ca_create_subscription(ftype, count, entry.chid, mask, cb, key, ctypes.byref(evid))
    except Exception:
        with ctx.lock:
            _forget_subscription(ctx, key)
        raise
    with ctx.lock:
        sub.evid = evid.value
        ctx.sub_by_evid[evid.value] = key
    lib.ca_flush_io()
    return (cb, key, evid)


def _forget_subscription(ctx: CAContext, key: int) -> None:
    """Drop subscription *key* from its context's tables (caller holds ``ctx.lock``); O(1), so clearing
    N channels or subscriptions is O(N), not O(N²)."""
    sub = ctx.subscriptions.pop(key, None)
    if sub is None:
        return
    if ctx.sub_by_evid.get(sub.evid) == key:  # type: ignore[arg-type]
        del ctx.sub_by_evid[sub.evid]  # type: ignore[arg-type]
    entry = ctx.channels.get(sub.chid)
    if entry is not None:
        entry.subs.discard(key)


def clear_subscription(event_id: Any) -> int:
    """Cancel a subscription (the tuple :func:`create_subscription` returned, or its evid); ECA status.

    A subscription capar no longer knows (cleared before, or gone with its channel through
    :func:`clear_channel`/:func:`clear_cache`) is not handed to libca, whose event id would dangle: the
    result is ``ECA_BADMONID``.  Pass the tuple where you can: an evid alone may by then name a newer
    subscription that libca placed at the same address.
    """
    key = None
    if isinstance(event_id, tuple):
        key = event_id[1] if len(event_id) > 1 and isinstance(event_id[1], int) else None
        event_id = event_id[-1]
    ev = getattr(event_id, "value", event_id)
    for ctx in list(registry().contexts.values()):
        with ctx.teardown():
            with ctx.lock:
                k = ctx.sub_by_evid.get(ev) if key is None else key
                sub = ctx.subscriptions.get(k) if k is not None else None
                if sub is None or sub.evid != ev:
                    continue
                _forget_subscription(ctx, k)  # type: ignore[arg-type]
            if not ctx.alive:
                return errors.ECA.NORMAL
            return ctx.lib.ca_clear_subscription(ev)
    return errors.ECA.BADMONID


# --------------------------------------------------------------------------------------------------
# event loop and housekeeping

def pend_io(timeout: float = 1.0) -> int:
    """``ca_pend_io``: wait up to *timeout* seconds for outstanding channel creates/gets; ECA status."""
    return current().lib.ca_pend_io(errors.seconds(timeout))


def pend_event(timeout: float = 1.e-5) -> int:
    """``ca_pend_event``: process CA events for *timeout* seconds; ECA status."""
    return current().lib.ca_pend_event(errors.seconds(timeout))


def poll(evt: float = 1.e-5, iot: float = 1.0) -> int:
    """Process events for *evt* seconds, then wait up to *iot* seconds for outstanding IO."""
    pend_event(evt)
    return pend_io(iot)


def flush_io() -> int:
    """Send buffered requests now; ECA status."""
    return current().lib.ca_flush_io()


def test_io() -> bool:
    """True when all outstanding IO has completed."""
    return current().lib.ca_test_io() == errors.ECA.IODONE


def message(status: int) -> str:
    """libca's text for an ECA status code."""
    return current().lib.ca_message(int(status)).decode()


def version() -> str:
    """libca's protocol version string."""
    return current().lib.ca_version().decode()


def clear_cache() -> None:
    """Clear every channel and subscription of this process (pyepics ``clear_cache``); the contexts stay.

    First the functions given to ``register_clear_cache``, then every Group and Monitor closes itself and
    the PV caches are emptied, then the channels are cleared.
    """
    reg = registry()
    for hook in list(reg.clear_cache_hooks):
        try:
            hook()
        except Exception:
            log.exception("capar: clear_cache hook failed")
    for ctx in list(reg.contexts.values()):
        ctx.release_owned()
        for key in list(ctx.channels):
            try:
                clear_channel(key)
            except Exception:
                log.exception("capar: clearing channel failed")
        ctx.forget_channels()
    if reg.lib is not None and not reg.finalized and reg.lib.ca_current_context():
        reg.lib.ca_flush_io()


def get_cache(pvname: str) -> Optional[ChannelEntry]:
    """The channel entry of *pvname* in the calling thread's context (None when absent)."""
    ctx = current()
    key = ctx.by_name.get(pvname)
    return ctx.channels.get(key) if key is not None else None
