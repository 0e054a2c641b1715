"""Channels and requests whose every completion calls a Python handler (the layer under :mod:`capar.aio`).

:class:`CallbackChannels` is one table per :class:`~capar.ca.context.CAContext`: channels created with a
connection handler, ``ca_array_get_callback`` / ``ca_array_put_callback`` requests and subscriptions, each
found by its libca user argument (an integer key of this table), never through a global table.

Threads: the methods run in the caller's thread (an asyncio loop's, for :mod:`capar.aio`), attached to the
table's context.  The handlers run on libca's threads (preemptive callbacks): they get the request's raw DBR
bytes (copied out of libca's buffer, which is only valid during the callback) and must only hand work on,
e.g. with ``loop.call_soon_threadsafe``; an exception in a handler is logged, never raised into libca.
A channel's pending requests and subscriptions go with it when it is cleared; after that (and once the
context is closed or finalized) no handler of it runs again.
"""
from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from typing import Any, Callable, Optional

import numpy as np

from . import dbr, errors
from .binding import ConnectionCallback, EventCallback, chid_t, evid_t
from .context import CAContext, current

__all__ = ["CallbackChannels", "for_context", "raw_size", "STSACK_STRING", "CLASS_NAME", "PUT_ACKT", "PUT_ACKS"]

log = logging.getLogger("capar")
_string_at = ctypes.string_at
_NORMAL = errors.ECA.NORMAL

STSACK_STRING, CLASS_NAME = 37, 38  # DBR_STSACK_STRING, DBR_CLASS_NAME
PUT_ACKT, PUT_ACKS = 35, 36          # put-only alarm acknowledgement types (dbr_ushort_t)

#: handler of a get or subscription event: (ECA status, DBR type, element count, raw bytes or None)
DataHandler = Callable[[int, int, int, Optional[bytes]], None]
#: handler of a connection change (True: connected) or of a put completion (ECA status)
ConnHandler = Callable[[bool], None]
PutHandler = Callable[[int], None]


def raw_size(dbrtype: int, count: int) -> int:
    """Bytes libca hands a callback for *count* elements of *dbrtype* (also the two special string types)."""
    first, each = _SIZES[dbrtype]
    return first + each * (count - 1) if count > 1 else first


#: DBR type -> (bytes of the struct with one element, bytes of each further element)
_SIZES = {t: (dbr.dbr_size_n(t, 1), dbr.value_dtype(t).itemsize) for t in range(35)}
_SIZES[STSACK_STRING] = (8 + dbr.MAX_STRING_SIZE, dbr.MAX_STRING_SIZE)
_SIZES[CLASS_NAME] = (dbr.MAX_STRING_SIZE, dbr.MAX_STRING_SIZE)


def _deliver(item: tuple["_Chan", DataHandler], args: Any, what: str) -> None:
    """Call the DataHandler of *item* with the event *args* (its DBR bytes copied out of libca's buffer,
    valid only during the callback); an exception in the handler is logged, never raised into libca."""
    status, ptr, dbrtype, count = args.status, args.dbr, args.type, args.count
    raw = _string_at(ptr, raw_size(dbrtype, count)) if status == _NORMAL and ptr else None
    try:
        item[1](status, dbrtype, count, raw)
    except Exception:
        log.exception("capar: %s handler of %s raised", what, item[0].name)


class _Chan:
    __slots__ = ("key", "chid", "name", "on_connection", "requests", "subs")

    def __init__(self, key: int, name: str, on_connection: ConnHandler) -> None:
        self.key = key
        self.chid = 0
        self.name = name
        self.on_connection = on_connection
        self.requests: set[int] = set()  # keys of pending get/put requests
        self.subs: dict[int, int] = {}   # subscription key -> evid


class CallbackChannels:
    """The channels and requests of one context that report through Python handlers (module docstring).

    Use :func:`for_context` to get the table of a context (one per context).
    """

    def __init__(self, ctx: CAContext) -> None:
        self.ctx = ctx
        self.lock = threading.Lock()
        self.channels: dict[int, _Chan] = {}                               # key -> channel
        self.requests: dict[int, tuple[_Chan, Any]] = {}                   # key -> (channel, handler)
        self.subs: dict[int, tuple[_Chan, DataHandler]] = {}               # key -> (channel, handler)
        self._on_conn = ConnectionCallback(self._connection_event)
        self._on_get = EventCallback(self._get_event)
        self._on_put = EventCallback(self._put_event)
        self._on_sub = EventCallback(self._sub_event)
        self._conn_ptr = ctypes.cast(self._on_conn, ctypes.c_void_p).value

    # -- libca threads ------------------------------------------------------------------------------
    def _connection_event(self, args: Any) -> None:
        if self.ctx.closed:
            return
        ch = self.channels.get(self.ctx.lib.ca_puser(args.chid) or 0)
        if ch is None:
            return
        try:
            ch.on_connection(args.op == dbr.OP_CONN_UP)
        except Exception:
            log.exception("capar: connection handler of %s raised", ch.name)

    def _take_request(self, args: Any) -> Optional[tuple[_Chan, Any]]:
        """The (channel, handler) of the completed request *args* is for, taken off the table; None when
        it is unknown (the context closed, the channel cleared or the request abandoned)."""
        if self.ctx.closed:
            return None
        key = args.usr or 0
        with self.lock:
            item = self.requests.pop(key, None)
            if item is not None:
                item[0].requests.discard(key)
        return item

    def _get_event(self, args: Any) -> None:
        item = self._take_request(args)
        if item is not None:
            _deliver(item, args, "get")

    def _put_event(self, args: Any) -> None:
        item = self._take_request(args)
        if item is None:
            return
        try:
            item[1](int(args.status))
        except Exception:
            log.exception("capar: put handler of %s raised", item[0].name)

    def _sub_event(self, args: Any) -> None:
        if self.ctx.closed:
            return
        item = self.subs.get(args.usr or 0)
        if item is not None:
            _deliver(item, args, "subscription")

    # -- channels -------------------------------------------------------------------------------------
    def create_channel(self, name: str, on_connection: ConnHandler) -> int:
        """Create a channel of *name* (already checked); ``on_connection(up)`` runs on libca's thread at
        every connection change.  Returns the channel's key; CAError (e.g. BadPVName) if libca refuses."""
        ctx = self.ctx
        lib = ctx.attach()
        key = ctx.new_key()
        ch = _Chan(key, name, on_connection)
        with self.lock:
            self.channels[key] = ch  # before libca may call back
        chid = chid_t()
        try:
            lib.ca_create_channel(name.encode("utf-8"), self._conn_ptr, key, 0, ctypes.byref(chid))
        except BaseException:
            with self.lock:
                self.channels.pop(key, None)
            raise
        ch.chid = chid.value or 0
        return key

    def clear_channel(self, key: int) -> None:
        """Clear a channel with its subscriptions and pending requests (no handler of them runs again)."""
        with self.lock:
            ch = self.channels.pop(key, None)
            if ch is None:
                return
            for k in ch.requests:
                self.requests.pop(k, None)
            for k in ch.subs:
                self.subs.pop(k, None)
        ctx = self.ctx
        if ch.chid and ctx.alive:
            with ctx.teardown():
                ctx.lib.ca_clear_channel(ch.chid)

    def _chan(self, key: int) -> _Chan:
        ch = self.channels.get(key)
        if ch is None or not ch.chid:
            raise errors.ChannelNotConnected(f"channel key {key} was cleared")
        return ch

    def has(self, key: int) -> bool:
        """True while channel *key* exists (not cleared, context alive)."""
        return key in self.channels and self.ctx.alive

    def state(self, key: int) -> int:
        return int(self.ctx.lib.ca_state(self._chan(key).chid))

    def field_type(self, key: int) -> int:
        return int(self.ctx.lib.ca_field_type(self._chan(key).chid))

    def element_count(self, key: int) -> int:
        return int(self.ctx.lib.ca_element_count(self._chan(key).chid))

    def host_name(self, key: int) -> str:
        return self.ctx.lib.ca_host_name(self._chan(key).chid).decode("utf-8", "replace")

    def read_access(self, key: int) -> bool:
        return bool(self.ctx.lib.ca_read_access(self._chan(key).chid))

    def write_access(self, key: int) -> bool:
        return bool(self.ctx.lib.ca_write_access(self._chan(key).chid))

    # -- requests ---------------------------------------------------------------------------------------
    def get(self, key: int, dbrtype: int, count: int, handler: DataHandler) -> None:
        """``ca_array_get_callback``: *handler* gets (status, type, count, raw bytes) on libca's thread.
        Raises CAError when libca refuses the request (the handler is then never called)."""
        ch = self._chan(key)
        lib = self.ctx.lib
        rkey = self.ctx.new_key()
        with self.lock:
            self.requests[rkey] = (ch, handler)
            ch.requests.add(rkey)
        status = lib.ca_array_get_callback(dbrtype, count, ch.chid, self._on_get, rkey)
        if status != errors.ECA.NORMAL:
            self._drop(ch, rkey)
            errors.raise_for_status(status, "ca_array_get_callback", ch.name)

    def put(self, key: int, dbrtype: int, count: int, buf: np.ndarray, handler: Optional[PutHandler]) -> None:
        """``ca_array_put`` (no *handler*) or ``ca_array_put_callback`` (``handler(status)`` on libca's
        thread at completion).  *buf* must be C-contiguous and stay alive until the call returns."""
        ch = self._chan(key)
        lib = self.ctx.lib
        if handler is None:
            status = lib.ca_array_put(dbrtype, count, ch.chid, buf.ctypes.data)
            errors.raise_for_status(status, "ca_array_put", ch.name)
            return
        rkey = self.ctx.new_key()
        with self.lock:
            self.requests[rkey] = (ch, handler)
            ch.requests.add(rkey)
        status = lib.ca_array_put_callback(dbrtype, count, ch.chid, buf.ctypes.data, self._on_put, rkey)
        if status != errors.ECA.NORMAL:
            self._drop(ch, rkey)
            errors.raise_for_status(status, "ca_array_put_callback", ch.name)

    def _drop(self, ch: _Chan, rkey: int) -> None:
        with self.lock:
            self.requests.pop(rkey, None)
            ch.requests.discard(rkey)

    def subscribe(self, key: int, dbrtype: int, count: int, mask: int, handler: DataHandler) -> int:
        """``ca_create_subscription``; *handler* gets every event on libca's thread.  Returns its key."""
        ch = self._chan(key)
        skey = self.ctx.new_key()
        with self.lock:
            self.subs[skey] = (ch, handler)
        evid = evid_t()
        try:
            self.ctx.lib.ca_create_subscription(dbrtype, count, ch.chid, mask, self._on_sub, skey,
                                                ctypes.byref(evid))
        except BaseException:
            with self.lock:
                self.subs.pop(skey, None)
            raise
        with self.lock:
            if skey in self.subs:
                ch.subs[skey] = evid.value or 0
        return skey

    def unsubscribe(self, skey: int) -> None:
        """Cancel a subscription (no-op when it is already gone, e.g. with its channel)."""
        with self.lock:
            item = self.subs.pop(skey, None)
            evid = item[0].subs.pop(skey, None) if item is not None else None
        ctx = self.ctx
        if evid and ctx.alive:
            with ctx.teardown():
                ctx.lib.ca_clear_subscription(evid)

    def flush(self) -> None:
        """``ca_flush_io``: send what was queued (no-op once the context is gone)."""
        if self.ctx.alive:
            self.ctx.attach().ca_flush_io()

    def close(self) -> None:
        """Clear every channel of this table (idempotent; no libca call once the context is gone)."""
        for key in list(self.channels):
            self.clear_channel(key)
        self.flush()


_TABLES: "weakref.WeakKeyDictionary[CAContext, CallbackChannels]" = weakref.WeakKeyDictionary()
_TABLES_LOCK = threading.Lock()


def for_context(ctx: Optional[CAContext] = None) -> CallbackChannels:
    """The :class:`CallbackChannels` of *ctx* (default: the calling thread's context, attached first): one
    per context, kept by the context itself (no table of this module's)."""
    ctx = ctx if ctx is not None else current()
    return ctx.kept("callback_channels", CallbackChannels)
