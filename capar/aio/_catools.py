"""aioca's ``caget``/``caput``/``camonitor``/``connect``/``cainfo`` on capar's binding.

Threads and loops:

- Each running event loop has a :class:`_LoopState`: its channel cache (one libca channel per PV name and
  loop, as in aioca) and its hand-off queue.  Several loops in several threads work at once; all use the
  context of the thread that first touches CA (capar's initial context, attached automatically).
- libca's threads never run user code and never touch loop objects: the handlers of
  :mod:`capar.ca.callbacks` decode the DBR into an augmented value and :meth:`_LoopState.post` it; ``post``
  appends to a list and calls ``loop.call_soon_threadsafe`` once per burst, so a thousand replies cost one
  wake-up of the loop, not a thousand.
- Nothing here blocks the loop: channel creation, requests and clears are non-blocking libca calls; waits
  are futures.
- A call over a list of PVs is ONE request object (:class:`_Request`) with one future, not one coroutine
  per PV; its results keep the input order.
"""
from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import time
import traceback
import types
import warnings
from collections import deque
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from ..ca import dbr as _cadbr
from ..ca import errors as _errors
from ..ca.callbacks import CallbackChannels, for_context
from ..ca.channel import check_name
from ..ca.context import process_state, registry
from . import dbr
from .types import AugmentedValue, Count, Datatype, Dbe, Format, Timeout

__all__ = [
    "CANothing", "CAInfo", "ChannelInfo", "Subscription", "caget", "caput", "camonitor", "connect", "cainfo",
    "get_channel_infos", "purge_channel_caches", "run", "DEFAULT_TIMEOUT", "ECA_NORMAL", "ECA_TIMEOUT",
    "ECA_DISCONN", "ECA_BADSTR",
]

PVs = Union[List[str], Tuple[str, ...]]
DEFAULT_TIMEOUT = 5.0  #: seconds, as aioca
ECA_NORMAL = _errors.ECA.NORMAL
ECA_TIMEOUT = _errors.ECA.TIMEOUT
ECA_DISCONN = _errors.ECA.DISCONN
ECA_BADSTR = _errors.ECA.BADSTR
_MISSING: Any = object()


def _ca_message(code: int) -> str:
    lib = registry().lib
    if lib is not None:
        try:
            return lib.ca_message(int(code)).decode()
        except Exception:  # libca shut down at exit
            pass
    return _errors.eca_message(code)


class CANothing(Exception):  # noqa: N818 (aioca's name)
    """Returned as a success or failure indicator from `caput`, as a failure indicator from `caget`, and
    raised to report a data error on caget or caput with wait (aioca's ``CANothing``)."""

    def __init__(self, name: str, errorcode: int = ECA_NORMAL) -> None:
        #: Name of the PV
        self.name: str = name
        #: True for successful completion, False for error code
        self.ok: bool = errorcode == ECA_NORMAL
        #: ECA error code
        self.errorcode: int = errorcode

    def __repr__(self) -> str:
        return f"CANothing({self.name!r}, {self.errorcode})"

    def __str__(self) -> str:
        return f"{self.name}: {_ca_message(self.errorcode)}"

    def __bool__(self) -> bool:
        return self.ok


def _relative(timeout: Timeout) -> Optional[float]:
    """A `Timeout` as seconds from now (None: no limit); NaN and non-numbers are errors."""
    if timeout is None:
        return None
    if isinstance(timeout, tuple):
        return _errors.seconds(timeout[0], "timeout deadline") - time.time()
    return _errors.seconds(timeout)


# --------------------------------------------------------------------------------------------------
# per-loop state: channel cache + hand-off from libca's threads

class _LoopState:
    """One event loop's channels and the queue through which libca's threads hand it work."""

    def __init__(self, loop: asyncio.AbstractEventLoop, table: CallbackChannels) -> None:
        self.loop = loop
        self.table = table
        self.channels: Dict[str, Channel] = {}
        self.flush_needed = False
        self._lock = threading.Lock()
        self._items: List[Tuple[Callable, tuple]] = []
        self._scheduled = False
        self._dead = False

    def post(self, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` in the loop soon (any thread; one loop wake-up per burst)."""
        with self._lock:
            if self._dead:
                return
            self._items.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody will ever read these
            with self._lock:
                self._dead = True
                self._items.clear()

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for fn, args in items:
            try:
                fn(*args)
            except Exception as exc:  # a bug of ours: report it like asyncio does, keep going
                self.loop.call_exception_handler({"message": "capar.aio: hand-off failed", "exception": exc})
        if self.flush_needed:
            self.flush()

    def flush(self) -> None:
        self.flush_needed = False
        self.table.flush()

    def get_channel(self, name: str) -> "Channel":
        channel = self.channels.get(name)
        if channel is None or not self.table.has(channel.key):
            channel = self.channels[name] = Channel(name, self)
            self.flush_needed = True
        return channel

    def purge(self) -> None:
        for channel in list(self.channels.values()):
            channel._purge()
        self.channels.clear()
        if self.table.ctx.alive:
            self.table.flush()


def _loops() -> types.SimpleNamespace:
    """Per-process state (kept by capar's context registry, fresh after fork): ``states``, one
    :class:`_LoopState` per event loop, and its ``lock``."""
    return process_state("aio", lambda: types.SimpleNamespace(states={}, lock=threading.Lock()))


def _state() -> _LoopState:
    loop = asyncio.get_running_loop()
    loops = _loops()
    st = loops.states.get(loop)
    if st is None or not st.table.ctx.alive:
        table = for_context()  # attaches this thread to capar's context (the initial one if it has none)
        if not table.ctx.preemptive:
            raise RuntimeError("capar.aio needs preemptive callbacks (capar.ca.PREEMPTIVE_CALLBACK = True)")
        with loops.lock:
            for other in [s for lp, s in loops.states.items() if lp.is_closed()]:  # loops that ended: clean up
                loops.states.pop(other.loop, None)
                other.purge()
            st = loops.states[loop] = _LoopState(loop, table)
    return st


def purge_channel_caches() -> None:
    """Remove cached channel connections of every loop; this closes all subscriptions."""
    loops = _loops()
    with loops.lock:
        states = list(loops.states.values())
        loops.states.clear()
    for st in states:
        st.purge()


# --------------------------------------------------------------------------------------------------
# channels

class Channel:
    """One channel of one loop's cache (aioca's ``Channel``)."""

    __slots__ = ("name", "key", "field_type", "element_count", "_state", "_connected", "_waiters",
                 "_subscriptions")

    def __init__(self, name: str, state: _LoopState) -> None:
        self.name = name
        self._state = state
        self._connected = False
        #: native DBR type and element count, read at each connection (-1, 0 before)
        self.field_type = -1
        self.element_count = 0
        self._waiters: List[Callable[[], None]] = []
        self._subscriptions: "set[Subscription]" = set()
        self.key = state.table.create_channel(name, self._on_ca_connect)

    def _on_ca_connect(self, up: bool) -> None:  # libca thread
        self._state.post(self._on_connect, up)

    def _on_connect(self, up: bool) -> None:
        if self._state.channels.get(self.name) is not self:
            return  # purged
        if up:
            table = self._state.table
            try:
                self.field_type = table.field_type(self.key)
                self.element_count = table.element_count(self.key)
            except _errors.CAError:
                self.field_type = -1
            up = self.field_type >= 0  # disconnected again since libca reported it: wait for the next event
        self._connected = up
        if up:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w()
        for subscription in list(self._subscriptions):
            subscription._on_connect(up)

    def ready(self) -> bool:
        """Connected as far as the loop knows (libca's disconnection event may still be on its way: a
        request then fails with ECA_DISCONN and waits for the next connection, see :meth:`lost`)."""
        return self._connected

    def lost(self) -> None:
        """A request found the channel disconnected before the loop heard of it."""
        self._connected = False

    def add_waiter(self, fn: Callable[[], None]) -> None:
        self._waiters.append(fn)

    def remove_waiter(self, fn: Callable[[], None]) -> None:
        try:
            self._waiters.remove(fn)
        except ValueError:
            pass

    def _purge(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.close()
        self._waiters.clear()
        self._state.table.clear_channel(self.key)

    def _add_subscription(self, subscription: "Subscription") -> None:
        self._subscriptions.add(subscription)

    def _remove_subscription(self, subscription: "Subscription") -> None:
        self._subscriptions.discard(subscription)

    def count_subscriptions(self) -> int:
        """Number of active subscriptions of this channel."""
        return len(self._subscriptions)

    def connected(self) -> bool:
        """Whether this channel is connected."""
        return self._connected

    async def wait(self) -> None:
        """Wait until connected (no limit: wrap in a timeout)."""
        if self._connected:
            return
        fut = self._state.loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.add_waiter(wake)
        try:
            await fut
        finally:
            self.remove_waiter(wake)


def get_channel(pv: str) -> Channel:
    """The running loop's channel of *pv* (created when absent)."""
    return _state().get_channel(pv)


class ChannelInfo:
    """Information about a particular Channel: ``name``, ``connected``, ``subscriber_count``."""

    name: str
    connected: bool
    subscriber_count: int

    def __init__(self, name: str, connected: bool, subscriber_count: int) -> None:
        self.name = name
        self.connected = connected
        self.subscriber_count = subscriber_count

    def __repr__(self) -> str:
        return f"ChannelInfo({self.name!r}, connected={self.connected}, subscriber_count={self.subscriber_count})"


def get_channel_infos() -> List[ChannelInfo]:
    """Information about every channel of the running loop."""
    return [ChannelInfo(c.name, c.connected(), c.count_subscriptions()) for c in _state().channels.values()]


# --------------------------------------------------------------------------------------------------
# one call over one or many PVs

class _Request:
    """The results of one call over *names* (input order), completed by the loop; one future."""

    __slots__ = ("names", "results", "remaining", "future", "throw", "waits")

    def __init__(self, loop: asyncio.AbstractEventLoop, names: Sequence[str], throw: bool) -> None:
        self.names = names
        self.results: List[Any] = [_MISSING] * len(names)
        self.remaining = len(names)
        self.future: asyncio.Future = loop.create_future()
        self.throw = throw
        self.waits: List[Tuple[Channel, Callable[[], None]]] = []
        if not names:
            self.future.set_result(self.results)

    def done(self, i: int, value: Any) -> None:
        """Slot *i* is *value* (a CANothing failure raises at once when throwing; other exceptions always)."""
        if self.future.done() or self.results[i] is not _MISSING:
            return
        nothing = isinstance(value, CANothing)
        if nothing and value.ok:
            pass  # caput/connect's success value
        elif isinstance(value, BaseException) and (self.throw or not nothing):
            self.future.set_exception(value)
            return
        self.results[i] = value
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(self.results)

    def when_connected(self, channel: Channel, fn: Callable[[], None]) -> None:
        """Run *fn* now if *channel* is connected, else when it connects (forgotten when the call ends)."""
        if channel.ready():
            fn()
            return

        def go() -> None:
            if not self.future.done():
                fn()

        channel.add_waiter(go)
        self.waits.append((channel, go))

    async def result(self, timeout: Timeout, label: str) -> List[Any]:
        """Wait for every slot (at most *timeout*); a timeout raises ``CANothing(label, ECA_TIMEOUT)`` when
        throwing, else fills the missing slots with ``CANothing(name, ECA_TIMEOUT)``."""
        try:
            seconds = _relative(timeout)
            if seconds is None:
                return await self.future
            return await asyncio.wait_for(self.future, seconds)
        except asyncio.TimeoutError as exc:
            if self.throw:
                raise CANothing(label, ECA_TIMEOUT) from exc
            return [CANothing(n, ECA_TIMEOUT) if r is _MISSING else r for n, r in zip(self.names, self.results)]
        finally:
            for channel, fn in self.waits:
                channel.remove_waiter(fn)
            self.waits.clear()


def _names(pv: Any) -> Tuple[List[str], bool]:
    """(names, is_list) of a PV argument: a str, or a list/tuple of them."""
    if isinstance(pv, (list, tuple)):
        return list(pv), True
    return [pv], False


def _channels(st: _LoopState, req: _Request) -> List[Optional[Channel]]:
    """Channels of the request's names; a bad name fills its slot with CANothing(name, ECA_BADSTR)
    (raised when throwing), a non-str name raises TypeError."""
    out: List[Optional[Channel]] = []
    for i, name in enumerate(req.names):
        if not isinstance(name, str):
            raise TypeError(f"PV name must be a str, not {type(name).__name__}: {name!r}")
        try:
            check_name(name)
            out.append(st.get_channel(name))
        except (ValueError, _errors.CAError):
            out.append(None)
            req.done(i, CANothing(name, ECA_BADSTR))
    if st.flush_needed:
        st.flush()
    return out


def _failure(name: str, exc: BaseException) -> BaseException:
    """A libca refusal as CANothing (aioca's throw=False conversion); other exceptions unchanged."""
    if isinstance(exc, _errors.CAError):
        return CANothing(name, exc.status or ECA_DISCONN)
    return exc


def _label(is_list: bool, names: List[str]) -> str:
    return "Multiple PVs" if is_list else names[0]


# --------------------------------------------------------------------------------------------------
# caget

async def caget(pv: Union[str, PVs], datatype: Datatype = None, format: Format = dbr.FORMAT_RAW,
                count: Count = 0, timeout: Timeout = DEFAULT_TIMEOUT, throw: bool = True) -> Any:
    """Retrieve an `AugmentedValue` from one PV, or a list of them from a list of PVs.

    Args:
        datatype: Override `Datatype` to a non-native type
        format: Request extra `Format` fields (FORMAT_RAW, FORMAT_TIME, FORMAT_CTRL)
        count: Request a specific element `Count` in an array (0: server's length, -1: all)
        timeout: `Timeout`: None (no limit), seconds (float), or an absolute ``(deadline,)`` in
            ``time.time()`` seconds; for a list ONE limit for all PVs
        throw: If False then return `CANothing` instead of raising an exception

    Returns:
        `AugmentedValue` for a single PV or [`AugmentedValue`] for a list of PVs
    """
    names, is_list = _names(pv)
    st = _state()
    req = _Request(st.loop, names, throw)
    table = st.table
    for i, channel in enumerate(_channels(st, req)):
        if channel is not None:
            req.when_connected(channel, _caget_issue(st, table, req, i, channel, datatype, format, count))
    if st.flush_needed:
        st.flush()
    results = await req.result(timeout, _label(is_list, names))
    return results if is_list else results[0]


def _caget_issue(st: _LoopState, table: CallbackChannels, req: _Request, i: int, channel: Channel,
                 datatype: Datatype, format: Format, count: Count) -> Callable[[], None]:
    name = channel.name
    post, done = st.post, req.done

    def issue() -> None:
        key = channel.key
        try:
            nelm = channel.element_count
            n = nelm if count < 0 else (min(count, nelm) if count > 0 else 0)
            dbrcode, to_value = dbr.type_to_dbr(name, channel.field_type, nelm, datatype, format)
        except Exception as exc:
            done(i, exc)
            return

        def on_reply(status: int, dbrtype: int, n_: int, raw: Optional[bytes]) -> None:  # libca thread
            if status == ECA_NORMAL and raw is not None:
                try:
                    value: Any = to_value(raw, dbrtype, n_)
                except Exception as exc:
                    value = exc
            else:
                value = CANothing(name, status)
            post(done, i, value)

        try:
            table.get(key, dbrcode, n, on_reply)
        except _errors.CAError as exc:
            if exc.status == ECA_DISCONN:
                channel.lost()
                req.when_connected(channel, issue)
            else:
                done(i, _failure(name, exc))
            return
        st.flush_needed = True

    return issue


# --------------------------------------------------------------------------------------------------
# caput

async def caput(pv: Union[str, PVs], value: Any, datatype: Datatype = None, wait: bool = False,
                 timeout: Timeout = DEFAULT_TIMEOUT, throw: bool = True, repeat_value: bool = False) -> Any:
    """Write a value to one PV, or values to a list of PVs.

    If a list of PVs is given, then normally value will have the same length and value[i] is written to
    pv[i]. If value is a scalar or repeat_value=True then the same value is written to all PVs.

    Args:
        repeat_value: If True and a list of PVs is given, write the same value to every PV.
        datatype: Override `Datatype` to a non-native type
        wait: Do a caput with callback, waiting for completion
        timeout: `Timeout` (seconds, None or ``(deadline,)``) for the connection and, with wait=True,
            the completion; for a list ONE limit for all PVs
        throw: If False then return `CANothing` instead of raising an exception

    Returns:
        `CANothing` for single PV or [`CANothing`] for a list of PVs
    """
    names, is_list = _names(pv)
    if is_list:
        if repeat_value or isinstance(value, str):
            values = [value] * len(names)
        else:
            try:
                values = list(value)
            except TypeError:
                values = [value] * len(names)
        if len(names) != len(values):
            raise _LengthMismatch("PV and value lists must match in length")
    else:
        values = [value]
    st = _state()
    req = _Request(st.loop, names, throw)
    table = st.table
    for i, channel in enumerate(_channels(st, req)):
        if channel is not None:
            req.when_connected(channel, _caput_issue(st, table, req, i, channel, values[i], datatype, wait))
    if st.flush_needed:
        st.flush()
    results = await req.result(timeout, _label(is_list, names))
    return results if is_list else results[0]


class _LengthMismatch(ValueError, AssertionError):
    """caput: the PV and value lists differ in length (aioca asserts; a ValueError here too)."""


def _caput_issue(st: _LoopState, table: CallbackChannels, req: _Request, i: int, channel: Channel,
                 value: Any, datatype: Datatype, wait: bool) -> Callable[[], None]:
    name = channel.name
    post, done = st.post, req.done

    def issue() -> None:
        key = channel.key
        try:
            dbrcode, n, buf = dbr.value_to_dbr(name, channel.field_type, datatype, value)
        except Exception as exc:
            done(i, exc)
            return

        def on_complete(status: int) -> None:  # libca thread
            post(done, i, CANothing(name, status))

        try:
            table.put(key, dbrcode, n, buf, on_complete if wait else None)
        except _errors.CAError as exc:
            if exc.status == ECA_DISCONN:
                channel.lost()
                req.when_connected(channel, issue)
            else:
                done(i, _failure(name, exc))
            return
        st.flush_needed = True
        if not wait:
            done(i, CANothing(name))

    return issue


# --------------------------------------------------------------------------------------------------
# connect, cainfo

class CAInfo:
    """Object representing the information returned from `cainfo`."""

    #: Converts `state` into a printable description of the connection state.
    state_strings = ["never connected", "previously connected", "connected", "closed"]
    #: Textual descriptions of the possible channel data types (index: `datatype`)
    datatype_strings = ["string", "short", "float", "enum", "char", "long", "double", "no access"]

    def __init__(self, pv: str, channel: Channel) -> None:
        table = channel._state.table
        key = channel.key
        #: True iff the channel was successfully connected
        self.ok: bool = True
        #: The name of the PV
        self.name: str = pv
        #: State of channel as an integer (``state_strings[state]``)
        self.state: int = table.state(key)
        #: Host name and port of server providing this PV
        self.host: str = table.host_name(key)
        #: True iff read access to this PV
        self.read: bool = table.read_access(key)
        #: True iff write access to this PV
        self.write: bool = table.write_access(key)
        if self.state == _cadbr.CS_CONN:
            #: Data count of this channel
            self.count: int = table.element_count(key)
            #: Underlying channel datatype as `Dbr` value (``datatype_strings[datatype]``)
            self.datatype: int = table.field_type(key)
        else:
            self.count = 0
            self.datatype = 7  # DBF_NO_ACCESS

    def __str__(self) -> str:
        return f"""{self.name}:
    State: {self.state_strings[self.state]}
    Host: {self.host}
    Access: {self.read}, {self.write}
    Data type: {self.datatype_strings[self.datatype]}
    Count: {self.count}"""


async def _connected_call(pv: Any, wait: bool, timeout: Timeout, throw: bool,
                          make: Callable[[str, Channel], Any]) -> Any:
    names, is_list = _names(pv)
    st = _state()
    req = _Request(st.loop, names, throw)
    for i, channel in enumerate(_channels(st, req)):
        if channel is None:
            continue
        if wait:
            req.when_connected(channel, lambda i=i, c=channel: req.done(i, make(req.names[i], c)))
        else:
            req.done(i, make(names[i], channel))
    results = await req.result(timeout, _label(is_list, names))
    return results if is_list else results[0]


async def connect(pv: Union[str, PVs], wait: bool = True, timeout: Timeout = DEFAULT_TIMEOUT,
                  throw: bool = True) -> Any:
    """Establish a connection to one or more PVs (repeated calls have no extra effect).

    Args:
        wait: If False then queue a connection without waiting for completion
        timeout: `Timeout` (seconds, None or ``(deadline,)``) of the connect with wait=True
        throw: If False then return `CANothing` instead of raising an exception

    Returns:
        `CANothing` for single PV or [`CANothing`] for a list of PVs
    """
    return await _connected_call(pv, wait, timeout, throw, lambda name, channel: CANothing(name))


async def cainfo(pv: Union[str, PVs], wait: bool = True, timeout: Timeout = DEFAULT_TIMEOUT,
                 throw: bool = True) -> Any:
    """A `CAInfo` for one PV, or a list of them (arguments as `connect`; timeout in seconds)."""
    return await _connected_call(pv, wait, timeout, throw, CAInfo)


# --------------------------------------------------------------------------------------------------
# camonitor

class Subscription:
    """One channel access subscription delivering its updates to a callback, or to ``async for``.

    Attributes as aioca's: ``name``, ``callback``, ``channel``, ``state`` (OPENING/OPEN/CLOSED),
    ``all_updates``, ``notify_disconnect``, ``dropped_callbacks`` (updates merged away while a callback
    was running, or while nobody iterated), ``pending_values``.
    """

    OPENING = 0  #: subscription not complete yet
    OPEN = 1     #: normally active
    CLOSED = 2   #: closed

    _default_events = {
        dbr.FORMAT_RAW: dbr.DBE_VALUE,
        dbr.FORMAT_TIME: dbr.DBE_VALUE | dbr.DBE_ALARM,
        dbr.FORMAT_CTRL: dbr.DBE_VALUE | dbr.DBE_ALARM | dbr.DBE_PROPERTY,
    }

    def __init__(self, name: str, callback: Optional[Callable[[Any], Union[None, Awaitable]]], events: Dbe,
                 datatype: Datatype, format: Format, count: Count, all_updates: bool, notify_disconnect: bool,
                 connect_timeout: Timeout) -> None:
        self.name = name
        self.callback = callback
        self.all_updates = all_updates
        self.notify_disconnect = notify_disconnect
        #: The number of updates dropped because they arrived while another callback was in progress
        self.dropped_callbacks: int = 0
        self._loop = asyncio.get_running_loop()
        self.pending_values: Deque[AugmentedValue] = deque(maxlen=None if all_updates else 1)
        self._future: Optional[asyncio.Future] = None
        self._lock = threading.Lock()
        self._is_sync: Optional[bool] = None  # None until the first callback shows sync or async
        self._sub_key: Optional[int] = None
        self._signalled = False  # a _signal is on its way to the loop
        if events is None:
            events = self._default_events[format]
        check_name(name)
        st = _state()
        self._post = st.post
        self.channel = st.get_channel(name)
        if st.flush_needed:
            st.flush()
        self.state = self.OPENING
        self._task = asyncio.ensure_future(self._create_subscription(events, datatype, format, count,
                                                                     connect_timeout))

    # -- libca thread ----------------------------------------------------------------------------------
    def _event_handler(self, to_value: Callable) -> Callable[[int, int, int, Optional[bytes]], None]:
        """The function libca's thread calls with each event: decode, queue, wake the loop (once per
        burst: no new hand-off while one is pending)."""
        lock, pending, post, signal, close = self._lock, self.pending_values, self._post, self._signal, self.close
        merging = pending.maxlen is not None

        def on_event(status: int, dbrtype: int, count: int, raw: Optional[bytes]) -> None:
            try:
                if status != ECA_NORMAL or raw is None:
                    raise AssertionError(f"Subscription {self.name} got bad status {status}")
                value = to_value(raw, dbrtype, count)
                with lock:
                    if merging and pending:
                        self.dropped_callbacks += 1  # about to overwrite the value nobody has seen
                    pending.append(value)
                    if self._signalled:
                        return
                    self._signalled = True
                post(signal)
            except Exception:
                post(close, sys.exc_info())

        return on_event

    def _queue_value(self, value: Any) -> None:
        with self._lock:
            if self.pending_values.maxlen and self.pending_values:
                self.dropped_callbacks += 1  # about to overwrite the value nobody has seen
            self.pending_values.append(value)

    # -- loop ------------------------------------------------------------------------------------------
    def _signal(self) -> None:
        self._signalled = False
        if self.state == self.CLOSED:
            return
        try:
            if self._is_sync:
                while self.pending_values:
                    with self._lock:
                        value = self.pending_values.popleft()
                    self.callback(value)  # type: ignore[misc]
            elif self._future is not None:
                if not self._future.done():
                    self._future.set_result(True)
                self._future = None
        except Exception:
            self.close(sys.exc_info())

    def _on_connect(self, connected: bool) -> None:
        if not connected and self.notify_disconnect:
            self._queue_value(CANothing(self.name, ECA_DISCONN))
            self._signal()

    def close(self, exc_info: Any = None) -> None:
        """Close the subscription and release its resources; no further callbacks happen, not even
        those already queued.  ``async for`` over it ends."""
        if exc_info:
            print(f"Subscription {self.name} callback raised exception", file=sys.stderr)
            traceback.print_exception(*exc_info)
            print(f"Subscription {self.name} closed", file=sys.stderr)
        if self.state == self.OPEN:
            self.channel._remove_subscription(self)
            if self._sub_key is not None:
                self.channel._state.table.unsubscribe(self._sub_key)
                self._sub_key = None
        if not self._loop.is_closed():
            self.channel._state.table.flush()
            self._task.cancel()
        self.state = self.CLOSED
        fut, self._future = self._future, None
        if fut is not None and not fut.done():
            fut.set_result(False)

    async def _detect_async(self, ret: Any) -> None:
        self._is_sync = not inspect.isawaitable(ret)
        if not self._is_sync:
            await ret

    async def _deliver(self, value: Any) -> None:
        """Hand *value* (an update or a CANothing) to the callback, or to the iterator."""
        if self.callback is None:
            self._queue_value(value)
            self._signal()
            return
        await self._detect_async(self.callback(value))

    async def _wait_for_channel(self, timeout: Timeout) -> None:
        try:
            seconds = _relative(timeout)
            if seconds is None:
                await self.channel.wait()
            else:
                try:
                    await asyncio.wait_for(self.channel.wait(), seconds)
                except asyncio.TimeoutError as exc:
                    raise CANothing(self.name, ECA_TIMEOUT) from exc
        except CANothing as e:
            # tell the caller even with notify_disconnect=False, then wait for the connection (if ever)
            await self._deliver(e)
            await self.channel.wait()

    async def _create_subscription(self, events: int, datatype: Datatype, format: Format, count: Count,
                                   connect_timeout: Timeout) -> None:
        try:
            await self._wait_for_channel(connect_timeout)
            self.state = self.OPEN
            table = self.channel._state.table
            key = self.channel.key
            nelm = self.channel.element_count
            if count < 0:
                count = nelm
            self.channel._add_subscription(self)
            dbrcode, to_value = dbr.type_to_dbr(self.name, self.channel.field_type, nelm, datatype, format)
            self._sub_key = table.subscribe(key, dbrcode, count, events, self._event_handler(to_value))
            table.flush()
            if self.callback is None:
                self._is_sync = False
                return  # values are taken by __anext__
            while not self._is_sync:
                with self._lock:
                    values = list(self.pending_values)
                    self.pending_values.clear()
                if not values:
                    self._future = self._loop.create_future()
                    await self._future
                    continue
                for value in values:
                    ret = self.callback(value)
                    if self._is_sync is None:
                        await self._detect_async(ret)
                    elif not self._is_sync:
                        await ret
        except asyncio.CancelledError:
            raise
        except Exception:
            self.close(sys.exc_info())

    # -- async iteration (capar; aioca only has callbacks) ---------------------------------------------
    def __aiter__(self) -> "Subscription":
        if self.callback is not None:
            raise TypeError("this Subscription delivers to its callback; camonitor(pv) without a callback "
                            "can be iterated")
        return self

    async def __anext__(self) -> Any:
        while True:
            with self._lock:
                if self.pending_values:
                    return self.pending_values.popleft()
            if self.state == self.CLOSED:
                raise StopAsyncIteration
            self._future = fut = self._loop.create_future()
            await fut

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


def camonitor(pv: Union[str, PVs], callback: Optional[Callable[..., Union[None, Awaitable]]] = None,
              events: Dbe = None, datatype: Datatype = None, format: Format = dbr.FORMAT_RAW, count: Count = 0,
              all_updates: bool = False, notify_disconnect: bool = False,
              connect_timeout: Timeout = None) -> Any:
    """Create a subscription to one or more PVs (call from a running event loop).

    Args:
        callback: Regular function or async function, called with each update (and ``index`` as second
            argument for a list of PVs).  None (capar): iterate the Subscription with ``async for``.
        events: Bit-wise or of `Dbe` types to notify about; default depends on the format
        datatype: Override `Datatype` to a non-native type
        format: Request extra `Format` fields
        count: Request a specific element `Count` in an array
        all_updates: If True every update is delivered, otherwise updates arriving during the previous
            callback are merged into the most recent value, incrementing `Subscription.dropped_callbacks`
        notify_disconnect: If True, IOC disconnects are reported with a `CANothing` whose .ok is False
        connect_timeout: `Timeout` (seconds, None or ``(deadline,)``): report a `CANothing` (ECA_TIMEOUT)
            if not connected by then, even with notify_disconnect False; updates follow if it connects later

    Returns:
        `Subscription` for single PV or [`Subscription`] for a list of PVs
    """
    kwargs = dict(events=events, datatype=datatype, format=format, count=count, all_updates=all_updates,
                  notify_disconnect=notify_disconnect, connect_timeout=connect_timeout)
    if isinstance(pv, str):
        return Subscription(pv, callback, **kwargs)  # type: ignore[arg-type]
    if callback is None:
        return [Subscription(x, None, **kwargs) for x in pv]  # type: ignore[arg-type]
    cb = callback

    def make_cb(index: int) -> Callable[[Any], Any]:
        return lambda v: cb(v, index)

    return [Subscription(x, make_cb(i), **kwargs) for i, x in enumerate(pv)]  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------

def run(coro: Awaitable, forever: bool = False) -> Any:
    """Make an event loop and run *coro* in it (deprecated in aioca: use ``asyncio.run``).

    Args:
        forever: If True then run the event loop forever, otherwise return on completion of the coro
    """
    warnings.warn("aioca.run is deprecated, please use asyncio.run instead", DeprecationWarning, stacklevel=2)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    t = None
    try:
        if forever:
            t = asyncio.ensure_future(coro, loop=loop)
            loop.run_forever()
        else:
            return loop.run_until_complete(coro)
    finally:
        if t:
            t.cancel()
        loop.stop()
        loop.close()
