"""The rest of pyepics' ``epics.ca`` names that scripts use: messages, synchronous groups, decorators.

Each function keeps pyepics' name, signature and return convention, on top of capar's own binding
(:mod:`capar.ca.channel`, :mod:`capar.ca.context`).
"""
from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any, Callable, Optional

import numpy as np

from . import channel, context, dbr, errors, messages
from .context import registry

__all__ = [
    "find_libca", "find_libCom", "replace_printf_handler", "disable_ca_messages", "enable_ca_messages",
    "context_create", "context_destroy", "client_status", "promote_fieldtype", "register_clear_cache",
    "show_cache", "write", "PySEVCHK", "withCA", "withCHID", "withConnectedCHID", "withMaybeConnectedCHID",
    "withSEVCHK", "withInitialContext", "sg_create", "sg_delete", "sg_block", "sg_test", "sg_reset", "sg_get",
    "sg_put", "_unpack",
]


def find_libca() -> str:
    """Path of the libca shared library capar loads (from the ``epicscorelibs`` wheel)."""
    from .binding import libca_path

    return libca_path()


def find_libCom() -> str:
    """Path of the libCom shared library next to :func:`find_libca`."""
    from .binding import _epics_lib

    return str(_epics_lib("Com"))


# -- messages -------------------------------------------------------------------------------------

def replace_printf_handler(writer: Optional[Callable[..., Any]] = None) -> None:
    """Send libca's printed messages to ``writer(text)`` (e.g. ``sys.stderr.write``) in every context of
    this process; ``writer=None`` suppresses them (they still reach the ``capar.ca`` logger at DEBUG).

    Unlike pyepics, the writer receives the formatted message, not only its format string.
    """
    if writer is not None and not callable(writer):
        raise errors.ChannelAccessException("argument to replace_printf_handler() must be callable")
    context.initialize_libca()
    registry().set_ca_messages(writer if writer is not None else messages.to_logger)


def disable_ca_messages() -> None:
    """Keep libca's messages off the terminal (the default, as pyepics): ``replace_printf_handler(None)``."""
    replace_printf_handler(None)


def enable_ca_messages(writer: Any = "stderr") -> None:
    """Print libca's messages (and CA exceptions) through *writer*: ``'stderr'``, ``'stdout'``, a callable
    taking the text, or None to suppress them."""
    if writer == "stderr":
        writer = sys.stderr.write
    elif writer == "stdout":
        writer = sys.stdout.write
    replace_printf_handler(writer)


# -- contexts and status ------------------------------------------------------------------------------

def context_create(ctx: Any = None) -> int:
    """pyepics' older name of :func:`~capar.ca.context.create_context`; returns ECA_NORMAL."""
    context.create_context(ctx)
    return dbr.ECA_NORMAL


def context_destroy() -> None:
    """pyepics' older name of :func:`~capar.ca.context.destroy_context`."""
    context.destroy_context()


def client_status(context_id: Any = None, level: int = 1) -> int:
    """libca's status report of the calling thread's context, printed by libca (to stderr)."""
    return registry_lib().ca_client_status(int(level))


def registry_lib() -> Any:
    """The loaded libca handle (loading it and creating the initial context if needed)."""
    context.ensure_context()
    return registry().lib


def promote_fieldtype(ftype: int, use_time: bool = False, use_ctrl: bool = False) -> int:
    """The TIME_ or CTRL_ variant of a native DBR type number (pyepics ``promote_fieldtype``)."""
    return dbr.promote_type(ftype, use_time=use_time, use_ctrl=use_ctrl)


def register_clear_cache(callback: Callable[[], None]) -> None:
    """Have *callback* called by :func:`~capar.ca.channel.clear_cache` before the channels are cleared."""
    if callback is None:
        return
    if not callable(callback):
        raise RuntimeError(f"Cannot register type {type(callback)}. Callable required.")
    hooks = registry().clear_cache_hooks
    if callback not in hooks:
        hooks.append(callback)


def show_cache(print_out: bool = True) -> Optional[str]:
    """A listing of this process's channels (name, chid, context, connected); printed or returned."""
    entries = [(chid, e) for ctx in list(registry().contexts.values()) for chid, e in list(ctx.channels.items())]
    out = ["#  PVName        ChannelID/Context Connected?", "#--------------------------------------------"]
    for chid, entry in sorted(entries, key=lambda kv: kv[1].pvname):
        out.append(f"  {entry.pvname:<15s} {chid} {entry.context} {entry.conn}")
    text = "\n".join(out)
    if print_out:
        write(text)
        return None
    return text


def write(msg: str, newline: bool = True, flush: bool = True) -> None:
    """Write *msg* to stdout (pyepics ``ca.write``)."""
    sys.stdout.write(msg + ("\n" if newline else ""))
    if flush:
        sys.stdout.flush()


# -- decorators ---------------------------------------------------------------------------------------

def PySEVCHK(func_name: str, status: int, expected: int = dbr.ECA_NORMAL) -> bool:
    """True when *status* is *expected*, else raise :class:`CASeverityException` with libca's message."""
    if status == expected:
        return True
    raise errors.CASeverityException(func_name, errors.eca_message(status))


def withCA(fcn: Callable) -> Callable:
    """Decorator: make sure libca is loaded and the thread has a context before *fcn* runs."""
    @functools.wraps(fcn)
    def wrapper(*args: Any, **kwds: Any) -> Any:
        context.ensure_context()
        return fcn(*args, **kwds)
    return wrapper


def withCHID(fcn: Callable) -> Callable:
    """Decorator: the first argument must be a channel id capar knows (else ChannelAccessException)."""
    @functools.wraps(fcn)
    def wrapper(*args: Any, **kwds: Any) -> Any:
        if not args:
            raise errors.ChannelAccessException(f"{fcn.__name__}: needs a chid")
        channel.channel_entry(args[0])
        return fcn(*args, **kwds)
    return wrapper


def withConnectedCHID(fcn: Callable) -> Callable:
    """Decorator: connect the channel given first (``timeout=`` keyword, seconds) or raise
    :class:`ChannelNotConnected`."""
    @functools.wraps(fcn)
    def wrapper(*args: Any, **kwds: Any) -> Any:
        if not args:
            raise errors.ChannelAccessException(f"{fcn.__name__}: needs a chid")
        if not channel.isConnected(args[0]):
            timeout = kwds.get("timeout", channel.DEFAULT_CONNECTION_TIMEOUT)
            if not channel.connect_channel(args[0], timeout=timeout):
                raise errors.ChannelNotConnected(f"{channel.name(args[0])} is not connected")
        return fcn(*args, **kwds)
    return wrapper


def withMaybeConnectedCHID(fcn: Callable) -> Callable:
    """Decorator: try to connect the channel given first (``timeout=``, seconds); call *fcn* either way."""
    @functools.wraps(fcn)
    def wrapper(*args: Any, **kwds: Any) -> Any:
        if args and not channel.isConnected(args[0]):
            channel.connect_channel(args[0], timeout=kwds.get("timeout", channel.DEFAULT_CONNECTION_TIMEOUT))
        return fcn(*args, **kwds)
    return wrapper


def withSEVCHK(fcn: Callable) -> Callable:
    """Decorator: *fcn* returns an ECA status; raise :class:`CASeverityException` unless it is normal."""
    @functools.wraps(fcn)
    def wrapper(*args: Any, **kwds: Any) -> Any:
        status = fcn(*args, **kwds)
        return PySEVCHK(fcn.__name__, status)
    return wrapper


withInitialContext = context.withInitialContext


# -- synchronous groups -------------------------------------------------------------------------------

def sg_create() -> ctypes.c_uint:
    """Create a synchronous group; returns its id (``ca_sg_create``)."""
    gid = ctypes.c_uint()
    registry_lib().ca_sg_create(ctypes.byref(gid))
    return gid


def _gid(gid: Any) -> int:
    return int(getattr(gid, "value", gid))


def sg_delete(gid: Any) -> bool:
    """Delete a synchronous group."""
    return PySEVCHK("sg_delete", registry_lib().ca_sg_delete(_gid(gid)))


def sg_block(gid: Any, timeout: float = 10.0) -> int:
    """Wait up to *timeout* seconds for the group's requests; ECA status (``ECA_TIMEOUT`` when not all
    came back)."""
    return registry_lib().ca_sg_block(_gid(gid), errors.seconds(timeout) or 1e-9)


def sg_test(gid: Any) -> bool:
    """True when every request of the group has completed, else :class:`CASeverityException`
    (pyepics' convention).

    Never calls libca's ``ca_sg_test``: in a preemptive-callback context (capar's default) that function
    aborts the process.  The test is a zero-length ``ca_sg_block`` instead.
    """
    status = registry_lib().ca_sg_block(_gid(gid), 1e-9)
    if status == errors.ECA.NORMAL:
        return True
    return PySEVCHK("sg_test", errors.ECA.IOINPROGRESS if status == errors.ECA.TIMEOUT else status,
                    dbr.ECA_IODONE)


def sg_reset(gid: Any) -> bool:
    """Forget the group's outstanding requests."""
    return PySEVCHK("sg_reset", registry_lib().ca_sg_reset(_gid(gid)))


class _SGData:
    """The buffer of one :func:`sg_get`: filled by libca when the group completes; :func:`_unpack` reads it."""

    __slots__ = ("chid", "ftype", "count", "buf", "as_numpy", "as_string")

    def __init__(self, chid: Any, ftype: int, count: int, as_numpy: bool, as_string: bool) -> None:
        self.chid, self.ftype, self.count = chid, ftype, count
        self.as_numpy, self.as_string = as_numpy, as_string
        self.buf = ctypes.create_string_buffer(max(dbr.dbr_size_n(ftype, count), 8))

    def value(self) -> Any:
        values, _ = dbr.decode(self.ftype, self.count, self.buf.raw)
        entry = channel.channel_entry(self.chid)
        val = channel.unpack_value(entry, self.ftype, values, self.count, as_numpy=self.as_numpy)
        if self.as_string:
            val = channel._as_string(entry, self.ftype, values, val, self.count)
        return val

    def __repr__(self) -> str:
        return f"<sg_get data of {channel.name(self.chid)!r}: use ca._unpack(chid, data) after sg_block>"


def sg_get(gid: Any, chid: Any, ftype: Optional[int] = None, as_numpy: bool = True,
           as_string: bool = True) -> _SGData:
    """Queue a read of *chid* in group *gid*; returns the data holder to pass to :func:`_unpack` after
    :func:`sg_block` (pyepics' documented use: ``data = sg_get(g, chid); sg_block(g); _unpack(chid, data)``).
    """
    entry = channel.channel_entry(chid)
    if not channel.isConnected(chid):
        raise errors.ChannelNotConnected(f"{entry.pvname} is not connected")
    ftype = channel.field_type(chid) if ftype is None else int(ftype)
    count = max(1, channel.element_count(chid))
    data = _SGData(chid, ftype, count, as_numpy, as_string)
    lib = registry_lib()
    PySEVCHK("sg_get", lib.ca_sg_array_get(_gid(gid), ftype, count, entry.chid, data.buf))
    return data


def _unpack(*args: Any, **kwds: Any) -> Any:
    """The value in an :func:`sg_get` data holder: ``_unpack(chid, data)`` or ``_unpack(data, chid=chid)``
    (pyepics' signature and its documented example use both); other keywords are accepted and ignored."""
    data = kwds.get("data")
    for arg in args:
        if isinstance(arg, _SGData):
            data = arg
    if not isinstance(data, _SGData):
        raise errors.ChannelAccessException("_unpack: pass the data returned by sg_get")
    return data.value()


def sg_put(gid: Any, chid: Any, value: Any) -> bool:
    """Queue a write of *value* to *chid* in group *gid* (no completion callback)."""
    entry = channel.channel_entry(chid)
    if not channel.isConnected(chid):
        raise errors.ChannelNotConnected(f"{entry.pvname} is not connected")
    ptype, count, arr = channel.encode_value(entry.pvname, channel.field_type(chid),
                                             channel.element_count(chid), value)
    arr = np.ascontiguousarray(arr)
    lib = registry_lib()
    status = lib.ca_sg_array_put(_gid(gid), ptype, count, entry.chid,
                                     arr.ctypes.data_as(ctypes.c_void_p))
    # keep the buffer alive until the group completes: libca copies it into its send buffer at once
    return PySEVCHK("sg_put", status)
