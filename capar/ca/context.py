"""Who owns what in Channel Access: one :class:`CAContext` per libca context, one registry per process.

- :class:`ContextRegistry` (one per process, ``registry()``) is the only mutable state of ``capar.ca`` that
  lives beyond one context: the loaded :class:`~capar.ca.binding.LibCA`, the user's settings
  (``capar.ca.PREEMPTIVE_CALLBACK``, ``WITH_CA_MESSAGES``), the :class:`CAContext` of every libca context
  capar knows (the first one is the *initial context*), ``clear_cache`` hooks, and the state of shutdown.
- :class:`CAContext` owns one libca context: its handle, the typed tables of what was made in it (channels,
  subscriptions, pending put and bulk requests, the Monitor core's channels and subscriptions, the PV cache),
  the C callbacks libca calls for it (each bound to this context, so a callback finds its target from its
  user argument in this context's table, never in a global one), the Groups and Monitors made in it
  (``adopt``: each closes itself at ``clear_cache``/exit), what was dropped without ``close()`` (``orphan``),
  and its own teardown.  Layers above create what they own through it; nothing else keeps CA state.
- Threads: libca's own threads run the callbacks (preemptive mode).  A callback only looks up its table and
  updates one entry under that entry's lock; user callbacks run with no capar lock held.  ``CAContext.lock``
  guards the tables, ``teardown_lock`` orders ``ca_clear_*`` made outside libca's threads.
- ``fork()``: libca threads do not survive it.  An ``os.register_at_fork`` hook gives the child a fresh, empty
  registry (settings kept) that remembers the inherited context only to *detach* it (never destroy or use
  it); the child then creates its own context on first CA use.  Objects of the parent's contexts raise
  :class:`ContextError` in the child.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import shutil
import sys
import threading
import time
import weakref
from typing import Any, Callable, Optional, Protocol, TypeVar

from . import errors, messages
from .errors import ContextError

__all__ = [
    "CAContext", "ContextRegistry", "Settings", "ChannelEntry", "Subscription", "PutRequest", "registry", "current", "initialize_libca", "finalize_libca",
    "ensure_context", "create_context", "destroy_context", "attach_context", "detach_context",
    "current_context", "use_initial_context", "withInitialContext", "CAThread", "DEFAULT_MAX_ARRAY_BYTES",
]

log = logging.getLogger("capar")
F = TypeVar("F", bound=Callable[..., Any])

#: EPICS_CA_MAX_ARRAY_BYTES used when the user has not set it (bytes; libca's own default is 16384).
DEFAULT_MAX_ARRAY_BYTES = 100_000_000
_CHECK_SLICE = 0.01  # seconds: the longest ca_pend_event between two looks in a non-preemptive wait


class Closable(Protocol):
    """What a context can close at ``clear_cache`` and exit: a Group, a Monitor, their channel sets."""

    def close(self) -> None: ...


class Settings:
    """The user's process-wide switches (``capar.ca.PREEMPTIVE_CALLBACK``, ``capar.ca.WITH_CA_MESSAGES``),
    read when a context is created; kept across fork."""

    __slots__ = ("preemptive", "with_ca_messages")

    def __init__(self, preemptive: bool = True, with_ca_messages: bool = False) -> None:
        self.preemptive = preemptive
        self.with_ca_messages = with_ca_messages


# --------------------------------------------------------------------------------------------------
# the rows of a context's tables

class ChannelEntry:
    """What capar knows about one channel (in its context's ``channels`` table; guarded by ``cond``)."""

    __slots__ = ("chid", "pvname", "ctx", "callbacks", "conn", "cond", "get_results", "auto_cb",
                 "ts", "failures", "subs", "access_callbacks", "__weakref__")

    def __init__(self, chid: int, pvname: str, ctx: "CAContext", auto_cb: bool) -> None:
        self.chid = chid
        self.pvname = pvname
        self.ctx = ctx
        self.callbacks: list[Callable] = []
        self.conn = False
        self.cond = threading.Condition(threading.Lock())
        self.get_results: dict[int, Any] = {}
        self.auto_cb = auto_cb
        self.ts = 0.0
        self.failures = 0
        self.subs: set[int] = set()  # keys of this channel's subscriptions in ctx.subscriptions
        self.access_callbacks: list[Callable] = []  # replace_access_rights_event's, called (read, write)

    @property
    def context(self) -> int:
        """Handle of the channel's libca context."""
        return self.ctx.handle

    def run_connection_callbacks(self, conn: bool) -> None:
        for cb in list(self.callbacks):
            try:
                cb(pvname=self.pvname, chid=self.chid, conn=conn)
            except Exception:
                log.exception("capar: connection callback for %s raised", self.pvname)


class Subscription:
    """One :func:`create_subscription` (in its context's ``subscriptions`` table, keyed by user argument)."""

    __slots__ = ("chid", "callback", "evid")

    def __init__(self, chid: int, callback: Optional[Callable]) -> None:
        self.chid = chid
        self.callback = callback
        self.evid: Optional[int] = None


class PutRequest:
    """A ``put`` with completion callback or wait (in its context's ``puts`` table until libca answers)."""

    __slots__ = ("pvname", "done", "status", "callback", "callback_data", "buf")

    def __init__(self, pvname: str, callback: Optional[Callable], callback_data: Any, buf: Any) -> None:
        self.pvname = pvname
        self.done = threading.Event()
        self.status: Optional[int] = None
        self.callback = callback
        self.callback_data = callback_data
        self.buf = buf  # the written buffer stays alive until libca has sent it


# --------------------------------------------------------------------------------------------------

class CAContext:
    """One libca context and everything capar made in it (see module docstring).

    Created by :func:`create_context` / the first CA call (``owned``: capar destroys it at exit), or as a
    record of a context capar found attached to a thread (not owned: never destroyed by capar).
    """

    def __init__(self, reg: "ContextRegistry", handle: int, preemptive: bool, owned: bool) -> None:
        self.registry = reg
        self.lib: Any = reg.lib
        self.core: Any = reg.core  # capar.ca.core.Core or None (the pure-ctypes path)
        self.handle = handle
        self.preemptive = preemptive
        self.owned = owned
        self.closed = False  # finalized or destroyed: callbacks return at once, calls raise ContextError
        self.lock = threading.RLock()       # guards the tables below
        self.conn_lock = threading.Lock()   # registering a channel vs. its first connection event
        # serialises ca_clear_channel / ca_clear_subscription made outside libca's callback threads, so that
        # no thread frees a subscription while another still holds its (then dangling) evid
        self.teardown_lock = threading.Lock()
        self._next_key = 1
        # channel layer (capar.ca.channel)
        self.channels: dict[int, ChannelEntry] = {}          # chid -> entry
        self.by_name: dict[str, int] = {}                    # pvname -> chid
        self.early_connections: dict[int, bool] = {}         # connection events before their entry existed
        self.subscriptions: dict[int, Subscription] = {}     # user arg -> subscription
        self.sub_by_evid: dict[int, int] = {}                # libca event id -> user arg
        self.puts: dict[int, PutRequest] = {}                # user arg -> pending put with callback
        # bulk layer (capar.ca.bulk): user arg -> (latch, slot) of a pending callback request
        self.bulk_requests: dict[int, tuple[Any, int]] = {}
        # monitor core (capar.ca.monitor): user arg -> (core, index) / (core, index, offset, size, mode)
        self.monitor_channels: dict[int, tuple[Any, int]] = {}
        self.monitor_subs: dict[int, tuple[Any, int, int, int, int]] = {}
        # pyepics layer (capar.pv): (pvname, form, context handle) -> PV, and camonitor's PVs by name
        self.pv_cache: dict[tuple[str, str, int], Any] = {}
        self.camonitors: dict[str, Any] = {}
        # Groups and Monitors made in this context (closed by clear_cache / exit), and what was dropped
        # without close(): appended from finalizers (no lock, no libca call), closed by the next owner made
        self.owners: "weakref.WeakSet[Closable]" = weakref.WeakSet()
        self.orphans: list[Closable] = []
        self._c: dict[str, Any] = {}  # CFUNCTYPE objects libca calls for this context (kept alive here)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.channels)} channels"
        return f"<CAContext {self.handle:#x} {'preemptive' if self.preemptive else 'non-preemptive'}, {state}>"

    # -- keys and callbacks ----------------------------------------------------------------------------
    def new_key(self) -> int:
        """A fresh user argument for libca (unique in this context)."""
        with self.lock:
            k = self._next_key
            self._next_key += 1
            return k

    def kept(self, name: str, factory: Callable[["CAContext"], Any]) -> Any:
        """The object *name* of this context -- one of its C callbacks (CFUNCTYPE objects bound to it), or an
        upper layer's per-context table -- made once by ``factory(self)`` and kept as long as the context."""
        obj = self._c.get(name)
        if obj is None:
            with self.lock:
                obj = self._c.get(name)
                if obj is None:
                    obj = self._c[name] = factory(self)
        return obj

    c_callback = kept  # the name the callback factories use

    # -- use --------------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True while this context may be used from this process (not closed, not inherited by fork)."""
        return not self.closed and self.registry is _state["registry"] and self.registry.pid == os.getpid()

    def check(self, what: str = "this object") -> None:
        """ContextError unless :attr:`alive`."""
        if self.registry is not _state["registry"] or self.registry.pid != os.getpid():
            raise ContextError(f"{what} belongs to another process (fork) or to a finalized libca; "
                               "create it again in this process")
        if self.closed:
            raise ContextError(f"{what} belongs to a CA context that was destroyed or finalized")

    def attach(self) -> Any:
        """Make sure the calling thread has a context (this one when it has none); returns libca."""
        self.check()
        ensure_context()
        return self.lib

    def wait_until(self, done: Callable[[], bool], deadline: float,
                   block: Optional[Callable[[float], Any]] = None, slice_: float = _CHECK_SLICE) -> bool:
        """Wait until ``done()`` or *deadline* (``time.monotonic()`` seconds); returns ``done()``.

        The one wait loop of capar: in a preemptive context ``block(remaining_seconds)`` (an Event's or a
        Condition's wait, woken by the callback that makes ``done()`` true); in a non-preemptive context,
        or without *block*, callbacks only run inside ``ca_pend_event``, so slices of at most *slice_*
        seconds of it.
        """
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return done()
            if block is not None and self.preemptive:
                block(remaining)
            else:
                self.attach().ca_pend_event(min(remaining, slice_))
        return True

    # -- what the layers above made ------------------------------------------------------------------
    def adopt(self, owner: Closable) -> None:
        """Close *owner* (a Group, a Monitor) at :func:`~capar.ca.channel.clear_cache` and at exit."""
        self.owners.add(owner)

    def orphan(self, resource: Closable) -> None:
        """Queue the libca clean-up of *resource* dropped without ``close()`` (safe in a finalizer or
        ``__del__``: no lock, no libca call); done by :meth:`close_orphans`."""
        self.orphans.append(resource)

    def close_orphans(self) -> None:
        """Close what was dropped without ``close()`` (called when a new owner is made, and at clear)."""
        while self.orphans:
            try:
                self.orphans.pop().close()
            except IndexError:  # another thread took the last one
                return
            except Exception:  # pragma: no cover - a clean-up must not stop the others
                log.exception("capar: closing an orphaned channel set failed")

    def release_owned(self) -> None:
        """Close every Group and Monitor made here and every orphan; empty the PV caches (pyepics'
        ``clear_cache`` then clears the channels)."""
        for owner in list(self.owners):
            try:
                owner.close()
            except Exception:  # pragma: no cover
                log.exception("capar: closing %r failed", owner)
        self.close_orphans()
        self.pv_cache.clear()
        self.camonitors.clear()

    def forget_channels(self) -> list[int]:
        """Drop every channel and subscription from the tables; returns the chids (for ``ca_clear_channel``)."""
        with self.lock:
            with self.conn_lock:
                chids = list(self.channels)
                self.channels.clear()
                self.early_connections.clear()
            self.by_name.clear()
            self.subscriptions.clear()
            self.sub_by_evid.clear()
        return chids

    def teardown(self) -> Any:
        """The lock that orders channel/subscription teardown; not taken on libca's own callback threads
        (foreign threads, seen by Python as ``_DummyThread``): they already hold libca's callback mutex,
        which every other thread's ``ca_clear_*`` must wait for, and a callback waiting for a thread that
        waits for the callback would deadlock."""
        if isinstance(threading.current_thread(), threading._DummyThread):
            return contextlib.nullcontext()
        return self.teardown_lock

    def _shutdown(self, lib: Any) -> None:
        """Close what was made here and destroy the libca context with *lib* (the real binding, the gate
        being closed); the caller holds the registry lock."""
        self.closed = True
        try:
            self.release_owned()
            self.forget_channels()
        except Exception:  # pragma: no cover
            log.exception("capar: clearing a context's tables failed")
        if not self.owned:
            return
        try:
            if lib.ca_current_context() != self.handle:
                if lib.ca_current_context():
                    lib.ca_detach_context()
                lib.ca_attach_context(self.handle)
            lib.ca_flush_io()
            lib.ca_context_destroy()  # clears every channel and subscription, joins libca's threads
        except Exception:  # pragma: no cover
            log.exception("capar: destroying a context failed")


class ContextRegistry:
    """The one per-process registry of contexts (see module docstring)."""

    def __init__(self, lib: Any = None, inherited_context: Optional[int] = None,
                 settings: Optional[Settings] = None) -> None:
        self.pid = os.getpid()
        self.lib = lib
        self.core: Any = None  # the compiled core bound to lib (capar.ca.core.Core), None on the ctypes path
        self.lock = threading.RLock()
        self.settings = settings if settings is not None else Settings()
        self.inherited_context = inherited_context  # a context inherited through fork: detached, never used
        self.forked_with_libca = False  # this process was forked from one that had loaded libca
        self.contexts: dict[int, CAContext] = {}    # handle -> context, in creation order
        self.initial: Optional[CAContext] = None
        self.clear_cache_hooks: list[Callable[[], Any]] = []  # register_clear_cache's, run by clear_cache
        self.extensions: dict[str, Any] = {}  # per-process state of capar's integrations (process_state)
        # where libca's printed messages go: None = libca's default (stderr); else a callable taking the text
        # (WITH_CA_MESSAGES False, the pyepics default: the 'capar.ca' logger at DEBUG, off the terminal)
        self.ca_messages: Optional[Callable[[str], Any]] = None
        self.finalized = False
        self.exiting = False  # finalized by interpreter exit: no restart (finalize_libca() by hand allows one)

    @property
    def initial_context(self) -> Optional[int]:
        """Handle of the initial context (None before the first CA call and after finalize)."""
        return self.initial.handle if self.initial is not None else None

    @property
    def preemptive(self) -> bool:
        """Whether the initial context (or the next one to be created) delivers callbacks preemptively."""
        return self.initial.preemptive if self.initial is not None else self.settings.preemptive

    def context_of(self, handle: int) -> CAContext:
        """The :class:`CAContext` of libca context *handle* (a record is made for one capar did not create)."""
        ctx = self.contexts.get(handle)
        if ctx is None:
            with self.lock:
                ctx = self.contexts.get(handle)
                if ctx is None:
                    ctx = self.contexts[handle] = CAContext(self, handle, self.preemptive, owned=False)
        return ctx

    def find_channel(self, chid: int) -> "Optional[ChannelEntry]":
        """The channel entry of *chid* in any context of this process, or None."""
        for ctx in list(self.contexts.values()):
            entry = ctx.channels.get(chid)
            if entry is not None:
                return entry
        return None

    def _new_context(self, lib: Any) -> CAContext:
        """Create a libca context for the calling thread (which has none) and its CAContext."""
        preemptive = bool(self.settings.preemptive)
        lib.ca_context_create(1 if preemptive else 0)
        ctx = CAContext(self, lib.ca_current_context(), preemptive, owned=True)
        self.contexts[ctx.handle] = ctx
        if self.initial is None and self.ca_messages is None and not self.settings.with_ca_messages:
            self.ca_messages = messages.to_logger
        messages.install(ctx, self.ca_messages is not None)
        if self.initial is None:
            self.initial = ctx
            atexit.register(_atexit_finalize, weakref.ref(self))
        return ctx

    def set_ca_messages(self, writer: Optional[Callable[[str], Any]]) -> None:
        """Send libca's printed messages (and CA exceptions) to ``writer(text)`` in every context of this
        process, current and future; ``writer=None`` restores libca's default printing to stderr."""
        self.ca_messages = writer
        if self.lib is None or self.finalized:
            return
        lib = self.lib
        cur = lib.ca_current_context()
        if cur:
            lib.ca_detach_context()  # a thread attaches to one context at a time: visit each, then come back
        try:
            for ctx in list(self.contexts.values()):
                if lib.ca_attach_context(ctx.handle) == errors.ECA.NORMAL:
                    messages.set_printf(ctx, writer is not None)
                    lib.ca_detach_context()
        finally:
            if cur:
                lib.ca_attach_context(cur)


_state: dict[str, ContextRegistry] = {"registry": ContextRegistry()}


def process_state(name: str, factory: Callable[[], Any]) -> Any:
    """The per-process state *name* of one of capar's integrations (the ophyd control layer, capar.aio's
    event loops), made by ``factory()`` on first use and kept by the registry: a fresh one in a forked
    child, and no module-level state anywhere."""
    reg = registry()
    state = reg.extensions.get(name)
    if state is None:
        with reg.lock:
            state = reg.extensions.get(name)
            if state is None:
                state = reg.extensions[name] = factory()
    return state


def registry() -> ContextRegistry:
    """This process's registry of contexts (a fresh one after ``fork()``)."""
    reg = _state["registry"]
    if reg.pid != os.getpid():  # fork without the at-fork hook having run (should not happen)
        reg = _reset_after_fork()
    return reg


def _reset_after_fork() -> ContextRegistry:
    old = _state["registry"]
    reg = ContextRegistry(lib=old.lib, inherited_context=old.initial_context, settings=old.settings)
    reg.core = old.core
    reg.forked_with_libca = old.lib is not None or old.forked_with_libca
    _state["registry"] = reg
    return reg


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def current() -> CAContext:
    """The :class:`CAContext` of the calling thread, attaching it to the initial context (created by the
    first call in the process) when it has none."""
    handle = ensure_context()
    reg = _state["registry"]
    ctx = reg.contexts.get(handle)
    return ctx if ctx is not None else reg.context_of(handle)


def _prepare_environment() -> None:
    """Defaults applied before the first context exists (never overriding the user's settings)."""
    os.environ.setdefault("EPICS_CA_MAX_ARRAY_BYTES", str(DEFAULT_MAX_ARRAY_BYTES))
    if shutil.which("caRepeater") is None:
        # our console script lives beside the interpreter in a venv; let libca find it there
        bindir = os.path.dirname(sys.executable)
        if os.path.exists(os.path.join(bindir, "caRepeater")):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def _load(reg: ContextRegistry) -> Any:
    if reg.lib is None:
        _prepare_environment()
        from .binding import load
        from .core import load as load_core

        lib = load()
        reg.core = load_core(lib)
        reg.lib = lib
    return reg.lib


def initialize_libca() -> Any:
    """Load libca and create the initial context for this process (idempotent).

    Returns the libca handle.  The context is preemptive unless ``capar.ca.PREEMPTIVE_CALLBACK`` was set
    to False before the first CA call.
    """
    reg = registry()
    if reg.finalized and not reg.exiting:
        reg = _restart(reg)
    with reg.lock:
        if reg.finalized:
            raise ContextError("libca was finalized in this process (interpreter exit)")
        lib = _load(reg)
        if reg.initial is not None:
            return lib
        cur = lib.ca_current_context()
        if cur and cur == reg.inherited_context:
            lib.ca_detach_context()  # inherited through fork: abandon, never use or destroy
            cur = None
        if cur:  # a context the program made with libca directly: recorded, never destroyed by capar
            reg.initial = reg.context_of(cur)
            atexit.register(_atexit_finalize, weakref.ref(reg))
        else:
            reg._new_context(lib)
        return lib


def _atexit_finalize(ref: "weakref.ref[ContextRegistry]") -> None:
    reg = ref()
    if reg is not None and reg is _state["registry"] and reg.pid == os.getpid():
        reg.exiting = True
        finalize_libca()


def _restart(old: ContextRegistry) -> ContextRegistry:
    """A fresh registry after an explicit :func:`finalize_libca` (pyepics lets a program call
    ``initialize_libca()`` again).  Channels, PVs and Groups of before stay unusable (ContextError)."""
    with old.lock:
        if _state["registry"] is not old:
            return _state["registry"]
        reg = ContextRegistry(lib=None, settings=old.settings)
        reg.clear_cache_hooks = old.clear_cache_hooks
        _state["registry"] = reg
    return reg


def finalize_libca(maxtime: float = 10.0) -> None:
    """Shut Channel Access down in this process: destroy the contexts capar created (at exit).

    Other threads may still be running capar code (a daemon CAThread, a callback, a wait): capar first
    refuses new work (callbacks return at once, every later libca call through capar raises
    :class:`ContextError`), then waits until no other thread is inside capar's libca layer, then destroys
    the contexts — so no thread can use a context, channel or mutex that is being freed.

    maxtime : float, seconds — the longest wait for other threads to leave libca (at most 2 s are used).
    """
    reg = registry()
    with reg.lock:
        if reg.finalized or reg.lib is None or reg.initial is None:
            reg.finalized = True
            return
        reg.finalized = True
        for ctx in reg.contexts.values():
            ctx.closed = True  # callbacks return at once from now on
        real = reg.lib.close_gate()
    _wait_until_out_of_libca(min(errors.seconds(maxtime), 2.0))
    with reg.lock:
        for hook in list(reg.clear_cache_hooks):
            _run_hook(hook)
        for ctx in list(reg.contexts.values()):
            ctx._shutdown(real)
        reg.contexts.clear()
        reg.initial = None


def _run_hook(hook: Callable[[], Any]) -> None:
    try:
        hook()
    except Exception:
        log.exception("capar: clear_cache hook %r failed", hook)


#: functions of this package that wait without entering libca (the compiled core's monitor ring wait)
_NOT_IN_LIBCA = frozenset({"_wait_in_core"})


def _wait_until_out_of_libca(timeout: float) -> None:
    """Wait up to *timeout* seconds until no other thread is executing code of this package — which is
    where every libca call is made, and what a thread shows while it is inside one."""
    here = os.path.dirname(os.path.abspath(__file__))
    me = threading.get_ident()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [ident for ident, frame in sys._current_frames().items()
                if ident != me and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here
                and frame.f_code.co_name not in _NOT_IN_LIBCA]
        if not busy:
            return
        time.sleep(0.002)  # releases the GIL: they finish their call, and the next one raises
    log.warning("capar: a thread was still inside libca at exit; destroying the context anyway")


def ensure_context() -> int:
    """Make sure the calling thread is attached to a CA context and return its handle.

    A thread with no context is attached to the initial context (what pyepics' PV objects and
    ``CAThread`` do); the first call in the process creates that context.
    """
    reg = _state["registry"]
    if reg.initial is None or reg.pid != os.getpid():
        initialize_libca()
        reg = registry()  # a new one if the program had finalized libca and starts again
    if reg.finalized:
        raise ContextError("libca was finalized in this process")
    lib = reg.lib
    cur = lib.ca_current_context()
    if cur and cur != reg.inherited_context:
        return cur
    if cur:
        lib.ca_detach_context()
    handle = reg.initial.handle  # type: ignore[union-attr]
    status = lib.ca_attach_context(handle)
    if status not in (errors.ECA.NORMAL, errors.ECA.ISATTACHED):
        errors.raise_for_status(status, "ca_attach_context")
    return handle


def create_context(ctx: Any = None) -> int:
    """Create a new context for the calling thread (pyepics ``create_context``); returns it.

    A thread already attached to a context keeps it.  The first context created in a process becomes
    the initial context.
    """
    reg = registry()
    if reg.finalized and not reg.exiting:
        reg = _restart(reg)
    lib = _load(reg)
    with reg.lock:
        cur = lib.ca_current_context()
        if cur and cur == reg.inherited_context:
            lib.ca_detach_context()
            cur = None
        if cur:
            return cur
        return reg._new_context(lib).handle


def destroy_context() -> None:
    """Destroy the calling thread's context (pyepics ``destroy_context``), clearing its channels."""
    reg = registry()
    if reg.lib is None:
        return
    lib = reg.lib
    cur = lib.ca_current_context()
    if not cur or cur == reg.inherited_context:
        return
    ctx = reg.context_of(cur)
    ctx.closed = True
    ctx.release_owned()
    with ctx.teardown():
        chids = ctx.forget_channels()
        for chid in chids:
            lib.ca_clear_channel(chid)
    lib.ca_context_destroy()
    with reg.lock:
        reg.contexts.pop(cur, None)
        if reg.initial is ctx:
            reg.initial = None


def attach_context(context: Any) -> int:
    """Attach the calling thread to *context* (an int or ctypes pointer); returns the ECA status."""
    reg = registry()
    lib = _load(reg)
    handle = getattr(context, "value", context)
    status = lib.ca_attach_context(handle)
    if status not in (errors.ECA.NORMAL, errors.ECA.ISATTACHED):
        errors.raise_for_status(status, "ca_attach_context")
    return status


def detach_context() -> None:
    """Detach the calling thread from its context (the context itself lives on)."""
    reg = registry()
    if reg.lib is not None:
        reg.lib.ca_detach_context()


def current_context() -> Optional[int]:
    """The calling thread's context (an int), or None when the thread has none."""
    reg = registry()
    lib = _load(reg)
    cur = lib.ca_current_context()
    if cur and cur == reg.inherited_context:
        return None
    return cur or None


def use_initial_context() -> None:
    """Attach the calling thread to the initial context (creating it first if needed)."""
    reg = registry()
    if reg.initial is None:
        initialize_libca()
        reg = registry()
    lib = reg.lib
    handle = reg.initial.handle  # type: ignore[union-attr]
    cur = lib.ca_current_context()
    if cur == handle:
        return
    if cur:
        lib.ca_detach_context()
    status = lib.ca_attach_context(handle)
    if status not in (errors.ECA.NORMAL, errors.ECA.ISATTACHED):
        errors.raise_for_status(status, "use_initial_context")


def withInitialContext(fcn: F) -> F:
    """Decorator: run *fcn* attached to the initial context (the seed's ``@withInitialContext``)."""

    @functools.wraps(fcn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        use_initial_context()
        return fcn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class CAThread(threading.Thread):
    """A :class:`threading.Thread` that attaches the initial CA context before running its target."""

    def run(self) -> None:
        try:
            use_initial_context()
            super().run()
        except ContextError:
            if registry().finalized:
                return  # the interpreter is exiting and capar shut libca down under this thread
            raise
