"""CAProcess and CAPool: multiprocessing with one clean libca context per process.

Start methods (DESIGN.md, "Contexts"):
- ``forkserver`` is the default on Linux: the server preloads capar and numpy, which load no shared
  library, so every child starts with no CA state and creates its own context on first use;
- ``spawn`` elsewhere;
- ``fork`` only on request: the at-fork hook of :mod:`capar.ca.context` gives the child an empty registry
  and the inherited libca context is abandoned (detached, never used or destroyed).  EPICS 7's libCom
  prints an "Undefined Behavior" warning in such a child once the parent has loaded libca; a Python
  warning says so.

EPICS_* environment variables of the parent at the time a process or pool is created are applied in the
child before its first CA call (a forkserver started earlier would otherwise hand out a stale environment).
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional

__all__ = ["CAProcess", "CAPool", "default_start_method", "get_context", "epics_environment",
           "shutdown_helpers"]

_PRELOAD = ["capar", "numpy"]


def default_start_method() -> str:
    """'forkserver' on Linux, 'spawn' elsewhere."""
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def get_context(start_method: Optional[str] = None) -> multiprocessing.context.BaseContext:
    """The multiprocessing context capar uses for *start_method* (None: :func:`default_start_method`)."""
    method = start_method or default_start_method()
    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"start method {method!r} is not available here "
                         f"({', '.join(multiprocessing.get_all_start_methods())})")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)
    elif method == "fork":
        reg = _registry_if_loaded()
        if reg is not None and reg.lib is not None:
            warnings.warn("capar: start_method='fork' after libca was loaded: EPICS may print 'Undefined "
                          "Behavior ... after fork()' in the child; capar gives the child a fresh context, "
                          "but forkserver (the default) avoids the problem entirely", RuntimeWarning,
                          stacklevel=3)
    return ctx


def _registry_if_loaded() -> Any:
    mod = sys.modules.get("capar.ca.context")
    return mod.registry() if mod is not None else None


def epics_environment() -> dict[str, str]:
    """The EPICS_* variables of this process (handed to every child)."""
    return {k: v for k, v in os.environ.items() if k.startswith("EPICS_")}


def _apply_environment(env: Mapping[str, str]) -> None:
    reg = _registry_if_loaded()
    if reg is not None and reg.initial_context is not None:
        return  # a context already exists in this process: its settings are fixed
    os.environ.update(env)


class CAProcess(multiprocessing.Process):
    """A :class:`multiprocessing.Process` whose target runs with its own, fresh CA context.

    Same arguments as ``multiprocessing.Process``, plus ``start_method`` ('forkserver' default on Linux,
    'spawn', or 'fork').
    """

    def __init__(self, group: None = None, target: Optional[Callable] = None, name: Optional[str] = None,
                 args: Iterable = (), kwargs: Optional[Mapping] = None, *, daemon: Optional[bool] = None,
                 start_method: Optional[str] = None) -> None:
        super().__init__(group=group, target=target, name=name, args=tuple(args), kwargs=dict(kwargs or {}),
                         daemon=daemon)
        self._ca_start_method = start_method or default_start_method()
        get_context(self._ca_start_method)  # validate early (ValueError in the parent)
        self._ca_env = epics_environment()

    def _Popen(self, process_obj: Any) -> Any:  # type: ignore[override]
        ctx = get_context(self._ca_start_method)
        return ctx.Process._Popen(process_obj)  # type: ignore[attr-defined]

    def run(self) -> None:
        _apply_environment(self._ca_env)
        super().run()


def _pool_initializer(env: Mapping[str, str], initializer: Optional[Callable], initargs: tuple) -> None:
    # A terminal's Ctrl-C reaches every process of the foreground group.  A pool worker killed by
    # KeyboardInterrupt while it waits for a task dies holding the task queue's lock, and the parent's
    # terminate() (the `with` exit) then waits for that lock forever.  Workers ignore SIGINT; the parent
    # gets the KeyboardInterrupt and terminate() stops them with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _apply_environment(env)
    if initializer is not None:
        initializer(*initargs)


class CAPool(multiprocessing.pool.Pool):
    """A :class:`multiprocessing.pool.Pool` of worker processes that each own a fresh CA context.

    Parameters as ``multiprocessing.pool.Pool`` (``processes`` must be ≥ 1 or None), plus
    ``start_method``.  The full Pool API is available: map, imap, imap_unordered, starmap, apply_async,
    close, join, terminate, and the context-manager protocol.

    Workers ignore SIGINT (an *initializer* may restore it): Ctrl-C raises KeyboardInterrupt in the
    parent only, whose ``terminate()`` — the ``with`` block's exit — then stops them.  With a plain
    ``multiprocessing.Pool`` a terminal's Ctrl-C can kill a worker that holds the task queue's lock and
    leave ``terminate()`` waiting forever.
    """

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable] = None,
                 initargs: Iterable = (), maxtasksperchild: Optional[int] = None, *,
                 start_method: Optional[str] = None) -> None:
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            self._state = multiprocessing.pool.CLOSE  # keep Pool.__del__ quiet: nothing was started
            raise ValueError(f"processes must be a positive int or None, not {processes!r}")
        ctx = get_context(start_method)
        super().__init__(processes, _pool_initializer, (epics_environment(), initializer, tuple(initargs)),
                         maxtasksperchild, context=ctx)


def shutdown_helpers() -> None:
    """Stop multiprocessing's forkserver and resource tracker processes of this process, if running.

    They end by themselves when this process exits; tests call this to leave no child behind.
    """
    import gc
    from multiprocessing import forkserver, resource_tracker

    gc.collect()  # run the finalizers of dead pools first: they unlink semaphores through the tracker
    for helper in (getattr(forkserver, "_forkserver", None), getattr(resource_tracker, "_resource_tracker", None)):
        stop = getattr(helper, "_stop", None)
        if stop is not None:
            stop()
