"""The per-process context registry: libca handle, initial context, channel/subscription tables, threads.

Ownership and threads:
- One :class:`Registry` per process (``registry()``).  It owns the loaded :class:`~capar.ca.libca.LibCA`,
  the *initial context* (the first context created, normally by the main thread), the channel table
  (chid → entry), the subscription table and the per-process caches of the layers above (``extras``).
- libca's own threads (preemptive callback mode) call back into Python through the CFUNCTYPE objects the
  registry holds; callbacks only touch entries under ``Registry.lock`` and never run once the registry
  is finalised (interpreter exit) — see :mod:`capar.ca.channel`.
- ``fork()``: libca threads do not survive it.  An ``os.register_at_fork`` hook gives the child a fresh,
  empty registry that remembers the inherited context only to *detach* it (never destroy or use it); the
  child then creates its own context on first CA use.
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import sys
import threading
import time
import weakref
from typing import Any, Callable, TypeVar

from . import errors
from .errors import ContextError

__all__ = [
    "Registry", "registry", "initialize_libca", "finalize_libca", "ensure_context", "create_context",
    "destroy_context", "attach_context", "detach_context", "current_context", "use_initial_context",
    "withInitialContext", "CAThread", "DEFAULT_MAX_ARRAY_BYTES",
]

log = logging.getLogger("capar")
F = TypeVar("F", bound=Callable[..., Any])

#: EPICS_CA_MAX_ARRAY_BYTES used when the user has not set it (bytes; libca's own default is 16384).
DEFAULT_MAX_ARRAY_BYTES = 100_000_000


class Registry:
    """Everything capar knows about Channel Access in this process."""

    def __init__(self, lib: Any = None, inherited_context: int | None = None) -> None:
        self.pid = os.getpid()
        self.lib = lib
        self.lock = threading.RLock()
        self.conn_lock = threading.Lock()       # registering a channel vs. its first connection event
        # serialises ca_clear_channel / ca_clear_subscription made outside libca's callback threads, so that
        # no thread frees a subscription while another still holds its (then dangling) evid
        self.teardown_lock = threading.Lock()
        self.early_connections: dict[int, bool] = {}  # events that arrived before their channel entry
        self.initial_context: int | None = None
        self.inherited_context = inherited_context
        self.contexts: set[int] = set()          # contexts created by capar in this process
        self.channels: dict[int, Any] = {}       # chid (int) -> channel entry (capar.ca.channel)
        self.by_name: dict[tuple[int, str], int] = {}  # (context, pvname) -> chid
        self.subscriptions: dict[int, Any] = {}  # user-arg key -> subscription record
        self.sub_by_evid: dict[int, int] = {}    # libca event id -> user-arg key of subscriptions
        self.puts: dict[int, Any] = {}           # user-arg key -> pending put-callback record
        self.next_key = 1
        self.callbacks: dict[str, Any] = {}      # CFUNCTYPE objects kept alive for libca
        self.extras: dict[str, Any] = {}         # per-process caches of higher layers (PV cache ...)
        self.finalized = False
        self.exiting = False  # finalized by interpreter exit: no restart (finalize_libca() by hand allows one)
        self.preemptive = True
        # where libca's printed messages go: None = libca's default (stderr); else a callable taking the text
        # (capar.ca.WITH_CA_MESSAGES False, the pyepics default: the 'capar.ca' logger at DEBUG, off the terminal)
        self.ca_messages: Any = None

    def new_key(self) -> int:
        with self.lock:
            k = self.next_key
            self.next_key += 1
            return k


_state: dict[str, Registry] = {"registry": Registry()}


def registry() -> Registry:
    """This process's registry (a fresh one after ``fork()``)."""
    reg = _state["registry"]
    if reg.pid != os.getpid():  # fork without the at-fork hook having run (should not happen)
        reg = _reset_after_fork()
    return reg


def _reset_after_fork() -> Registry:
    old = _state["registry"]
    inherited = old.initial_context
    reg = Registry(lib=old.lib, inherited_context=inherited)
    _state["registry"] = reg
    _run_reset_hooks()
    return reg


def _run_reset_hooks() -> None:
    """Let the layers drop what they kept of the registry that was just replaced (fork, restart)."""
    for hook in list(_fork_hooks):
        try:
            hook()
        except Exception:  # pragma: no cover - a layer's reset must never break the new registry
            log.exception("capar: registry reset hook failed")


_fork_hooks: list[Callable[[], None]] = []

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _prepare_environment() -> None:
    """Defaults applied before the first context exists (never overriding the user's settings)."""
    os.environ.setdefault("EPICS_CA_MAX_ARRAY_BYTES", str(DEFAULT_MAX_ARRAY_BYTES))
    if shutil.which("caRepeater") is None:
        # our console script lives beside the interpreter in a venv; let libca find it there
        bindir = os.path.dirname(sys.executable)
        if os.path.exists(os.path.join(bindir, "caRepeater")):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def _load(reg: Registry) -> Any:
    if reg.lib is None:
        _prepare_environment()
        from .libca import load

        reg.lib = load()
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
        if reg.initial_context is not None:
            return lib
        cur = lib.ca_current_context()
        if cur and cur == reg.inherited_context:
            lib.ca_detach_context()  # inherited through fork: abandon, never use or destroy
            cur = None
        if not cur:
            from . import channel

            reg.preemptive = bool(channel.preemptive_setting())
            lib.ca_context_create(1 if reg.preemptive else 0)
            cur = lib.ca_current_context()
            reg.contexts.add(cur)
            channel.install_exception_handler(reg)
        reg.initial_context = cur
        from .channel import install_callbacks

        install_callbacks(reg)
        atexit.register(_atexit_finalize, weakref.ref(reg))
        return lib


def _atexit_finalize(ref: "weakref.ref[Registry]") -> None:
    reg = ref()
    if reg is not None and reg is _state["registry"] and reg.pid == os.getpid():
        reg.exiting = True
        finalize_libca()


def _restart(old: Registry) -> Registry:
    """A fresh registry after an explicit :func:`finalize_libca` (pyepics lets a program call
    ``initialize_libca()`` again).  Channels, PVs and Groups of before stay unusable (ContextError)."""
    with old.lock:
        if _state["registry"] is not old:
            return _state["registry"]
        reg = Registry(lib=None)
        _state["registry"] = reg
    _run_reset_hooks()
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
        if reg.finalized or reg.lib is None or reg.initial_context is None:
            reg.finalized = True
            return
        reg.finalized = True
        real = reg.lib.close_gate()
    _wait_until_out_of_libca(min(errors.seconds(maxtime), 2.0))
    with reg.lock:
        from .channel import clear_cache

        try:
            clear_cache()  # capar's own bookkeeping: no libca call is made once finalized
        except Exception:  # pragma: no cover
            log.exception("capar: clearing channels at finalize failed")
        for ctx in list(reg.contexts):
            try:
                if real.ca_current_context() != ctx:
                    if real.ca_current_context():
                        real.ca_detach_context()
                    real.ca_attach_context(ctx)
                real.ca_flush_io()
                real.ca_context_destroy()  # clears every channel and subscription, joins libca's threads
            except Exception:  # pragma: no cover
                log.exception("capar: destroying a context failed")
        reg.contexts.clear()
        reg.initial_context = None


def _wait_until_out_of_libca(timeout: float) -> None:
    """Wait up to *timeout* seconds until no other thread is executing code of this package — which is
    where every libca call is made, and what a thread shows while it is inside one."""
    here = os.path.dirname(os.path.abspath(__file__))
    me = threading.get_ident()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [ident for ident, frame in sys._current_frames().items()
                if ident != me and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here]
        if not busy:
            return
        time.sleep(0.002)  # releases the GIL: they finish their call, and the next one raises
    log.warning("capar: a thread was still inside libca at exit; destroying the context anyway")


def ensure_context() -> int:
    """Make sure the calling thread is attached to a CA context and return it.

    A thread with no context is attached to the initial context (what pyepics' PV objects and
    ``CAThread`` do); the first call in the process creates that context.
    """
    reg = registry()
    lib = reg.lib
    if lib is None or reg.initial_context is None:
        initialize_libca()
        reg = registry()  # a new one if the program had finalized libca and starts again
        lib = reg.lib
    if reg.finalized:
        raise ContextError("libca was finalized in this process")
    cur = lib.ca_current_context()
    if cur and cur != reg.inherited_context:
        return cur
    if cur:
        lib.ca_detach_context()
    status = lib.ca_attach_context(reg.initial_context)
    if status not in (errors.ECA.NORMAL, errors.ECA.ISATTACHED):
        errors.raise_for_status(status, "ca_attach_context")
    return reg.initial_context  # type: ignore[return-value]


def create_context(ctx: Any = None) -> int:
    """Create a new context for the calling thread (pyepics ``create_context``); returns it.

    The first context created in a process becomes the initial context.
    """
    reg = registry()
    lib = _load(reg)
    with reg.lock:
        cur = lib.ca_current_context()
        if cur and cur == reg.inherited_context:
            lib.ca_detach_context()
            cur = None
        if cur:
            return cur
        from . import channel

        preemptive = bool(channel.preemptive_setting())
        lib.ca_context_create(1 if preemptive else 0)
        cur = lib.ca_current_context()
        reg.contexts.add(cur)
        channel.install_exception_handler(reg)
        if reg.initial_context is None:
            reg.preemptive = preemptive
            reg.initial_context = cur
            channel.install_callbacks(reg)
            atexit.register(_atexit_finalize, weakref.ref(reg))
        return cur


def destroy_context() -> None:
    """Destroy the calling thread's context (pyepics ``destroy_context``), clearing its channels."""
    reg = registry()
    if reg.lib is None:
        return
    lib = reg.lib
    cur = lib.ca_current_context()
    if not cur:
        return
    from .channel import clear_context_channels

    clear_context_channels(cur)
    lib.ca_context_destroy()
    with reg.lock:
        reg.contexts.discard(cur)
        if reg.initial_context == cur:
            reg.initial_context = None


def attach_context(context: Any) -> int:
    """Attach the calling thread to *context* (an int or ctypes pointer); returns the ECA status."""
    reg = registry()
    lib = _load(reg)
    ctx = getattr(context, "value", context)
    status = lib.ca_attach_context(ctx)
    if status not in (errors.ECA.NORMAL, errors.ECA.ISATTACHED):
        errors.raise_for_status(status, "ca_attach_context")
    return status


def detach_context() -> None:
    """Detach the calling thread from its context (the context itself lives on)."""
    reg = registry()
    if reg.lib is not None:
        reg.lib.ca_detach_context()


def current_context() -> int | None:
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
    if reg.initial_context is None:
        initialize_libca()
    lib = reg.lib
    cur = lib.ca_current_context()
    if cur == reg.initial_context:
        return
    if cur:
        lib.ca_detach_context()
    status = lib.ca_attach_context(reg.initial_context)
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
