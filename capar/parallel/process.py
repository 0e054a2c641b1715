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

import ast
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import time
import warnings
import weakref
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Mapping, Optional

__all__ = ["CAProcess", "CAPool", "default_start_method", "get_context", "epics_environment",
           "shutdown_helpers", "check_main_guard", "UnguardedMainError"]

# what the forkserver imports once for all children (`import capar` alone imports nothing: PEP 562)
_PRELOAD = ["capar.ca.channel", "capar.pv", "capar.bulk", "numpy"]


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


class UnguardedMainError(RuntimeError):
    """Processes were started from a script's top level without ``if __name__ == "__main__":``."""


def _guarded(source: str, lineno: int) -> bool:
    """False only if line *lineno* of a module's *source* runs unconditionally at the module's top level.

    That line is then certainly re-run by every forkserver/spawn child.  Any ``if``/``while``/``match`` on
    the way to it may be a main guard in some form (``if __name__ == "__main__":``, ``if IS_MAIN:``,
    ``if is_main():`` ...), so it counts as guarded: the check never refuses a script on a guess, and a
    guard it cannot see through is caught in the child (see :func:`check_main_guard`).
    """
    try:
        body: list[ast.stmt] = ast.parse(source).body
    except (SyntaxError, ValueError):
        return True
    conditional = (ast.If, ast.While) + ((ast.Match,) if hasattr(ast, "Match") else ())
    top = True
    while body:
        stmt = next((st for st in body if st.lineno <= lineno <= (st.end_lineno or st.lineno)), None)
        if stmt is None:
            # at the top: not a statement line (the file changed since it ran?), cannot tell; inside an
            # unconditional compound statement: its header, e.g. `with CAPool(2) as pool:`
            return top
        top = False
        if isinstance(stmt, conditional):
            return True
        inner: list[ast.stmt] = [st for field in ("body", "orelse", "finalbody")
                                 for st in getattr(stmt, field, ()) if isinstance(st, ast.stmt)]
        for handler in getattr(stmt, "handlers", ()):
            inner.extend(handler.body)
        if not inner or isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return False  # a simple statement (or a definition) at the top level, reached unconditionally
        body = inner
    return False


def check_main_guard(what: str, start_method: str) -> None:
    """Refuse to start processes from the unguarded top level of the main script.

    Under ``forkserver`` and ``spawn`` every child runs the main script again (as ``__mp_main__``) before
    its target.  A ``CAPool``/``CAProcess``/``Coordinator`` created at the script's top level without
    ``if __name__ == "__main__":`` is then created again in every child, which dies, and a pool would
    replace it forever.  This check runs in the parent before any process starts: it finds the main
    script's top-level statement that is executing now and raises :class:`UnguardedMainError` if that
    statement runs unconditionally (no ``if``/``while``/``match`` around it: any of them may be a guard,
    and a valid script is never refused on a guess).  In a child that is re-running the main script
    (multiprocessing's own ``_inheriting`` state) it raises the same error, whatever the guard looks like;
    a CAPool whose workers die that way becomes broken.

    Parameters
    ----------
    what : str
        What is being started ("CAPool", "CAProcess", "Coordinator"), for the message.
    start_method : str
        The start method the processes will use ('fork' re-runs nothing: no check).
    """
    fix = (f"with the {start_method!r} start method every child process runs the main script again "
           f"before its target, and would start its own {what}: put the code that starts processes under "
           f" if __name__ == \"__main__\":  (multiprocessing docs, 'Safe importing of main module')")
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        raise UnguardedMainError(f"{what} started in a child process while it re-ran the main script; {fix}")
    if start_method == "fork":
        return
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if not path or spec_name.endswith("__main__") or spec_name == "__main__":
        return  # interactive, -c, or a package's __main__: children do not re-run it
    path = os.path.abspath(path)
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or os.path.abspath(frame.f_code.co_filename) != path:
        return  # not from the main script's top level (a thread, a callback, code exec'd by a launcher)
    try:
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
    except (OSError, UnicodeDecodeError):
        return
    if not _guarded(source, frame.f_lineno):
        raise UnguardedMainError(f"{what} started at the top level of {path} (line {frame.f_lineno}) without a "
                                 f"main guard; {fix}")


def _registry_if_loaded() -> Any:
    """This process's context registry (importing it loads no libca; ``lib`` is None until the first CA call)."""
    from ..ca.context import registry

    return registry()


def epics_environment() -> dict[str, str]:
    """The EPICS_* variables of this process (handed to every child)."""
    return {k: v for k, v in os.environ.items() if k.startswith("EPICS_")}


def _apply_environment(env: Mapping[str, str]) -> None:
    reg = _registry_if_loaded()
    if reg is not None and reg.initial_context is not None:
        return  # a context already exists in this process: its settings are fixed
    os.environ.update(env)


def _explain_fork_context(exc: RuntimeError, method: str) -> None:
    """Re-raise multiprocessing's "SemLock created in a fork context" error with capar's fix; else return."""
    if "fork context" in str(exc):
        raise RuntimeError(
            f"{exc} -- a Queue/Lock/Event/Value made in the 'fork' context (before `import capar`, or "
            f"with CAPAR_KEEP_START_METHOD=1) cannot be handed to a {method!r} child: create it after "
            f"`import capar` (which makes forkserver the default), or with "
            f"capar.parallel.get_context().Queue() ...") from exc


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

    def start(self) -> None:
        """Start the child (after :func:`check_main_guard`); see ``multiprocessing.Process.start``."""
        check_main_guard("CAProcess", self._ca_start_method)
        try:
            super().start()
        except RuntimeError as exc:
            _explain_fork_context(exc, self._ca_start_method)
            raise

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


class _NoWorker:
    """Stands in for a worker that a broken CAPool does not start (multiprocessing's Pool would respawn)."""

    name, daemon, pid, exitcode = "CAPoolWorker (not started: pool broken)", True, None, None

    def start(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def join(self, timeout: Optional[float] = None) -> None:
        pass

    def is_alive(self) -> bool:
        return False


class _WorkerFactory:
    """``Pool.Process`` of a CAPool: starts its workers, and breaks the pool when one has died.

    multiprocessing's Pool replaces every worker that ends, so a worker that dies while starting (an
    initializer that raises, a script without a main guard) is replaced forever and ``map`` never returns;
    one that dies during a task leaves that task pending forever.  The pool asks this factory for each
    replacement: if a worker it started ended with a non-zero exit code, the CAPool becomes broken, as
    ``concurrent.futures.ProcessPoolExecutor`` does (pending and later calls raise ``BrokenProcessPool``
    naming the worker and its exit code), and no worker is started any more.
    """

    def __init__(self, pool: "CAPool") -> None:
        self.pool = weakref.ref(pool)
        self.started: list = []

    def __call__(self, ctx: Any, *args: Any, **kwds: Any) -> Any:
        pool = self.pool()
        if pool is not None:
            dead = [w for w in self.started if w.exitcode not in (None, 0)]
            self.started = [w for w in self.started if w.exitcode is None]
            if dead and pool.broken is None and pool._state != multiprocessing.pool.TERMINATE:
                w = dead[0]
                pool._break(f"a CAPool worker (pid {w.pid}) exited with code {w.exitcode}; the pool is broken "
                            f"(the worker's traceback, if any, went to stderr).  A worker that dies while "
                            f"starting is usually an initializer that raised, a script that starts "
                            f"processes without  if __name__ == \"__main__\":, or (Python < 3.11) a "
                            f"Queue/Lock made in the 'fork' context before `import capar`")
            if pool.broken is not None:
                return _NoWorker()
        w = ctx.Process(*args, **kwds)
        self.started.append(w)
        return w


def _fail_job(job: Any, exc: BaseException) -> None:
    """Finish a pending Pool result with *exc*: ``get()`` raises it, ``next()`` raises it then stops,
    ``error_callback`` gets it; results still in flight no longer touch the job."""
    job._set = lambda i, obj: None
    if isinstance(job, multiprocessing.pool.IMapIterator):
        job._set_length = lambda length: None
        with job._cond:
            job._items.append((False, exc))
            job._index += 1
            job._length = job._index  # nothing more will come
            job._cond.notify()
    else:
        job._success, job._value = False, exc
        if job._error_callback is not None:
            try:
                job._error_callback(exc)
            except Exception:  # noqa: BLE001 - as multiprocessing ignores a failing callback's error
                pass
        job._event.set()
    job._cache.pop(job._job, None)
    job._pool = None


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
        method = start_method or default_start_method()
        ctx = get_context(method)
        try:
            check_main_guard("CAPool", method)
        except UnguardedMainError:
            self._state = multiprocessing.pool.CLOSE
            raise
        self.broken: Optional[str] = None
        self.Process = _WorkerFactory(self)  # type: ignore[assignment,method-assign]
        try:
            super().__init__(processes, _pool_initializer, (epics_environment(), initializer, tuple(initargs)),
                             maxtasksperchild, context=ctx)
        except RuntimeError as exc:
            _explain_fork_context(exc, method)
            raise

    def _break(self, reason: str) -> None:
        """Fail every pending call with BrokenProcessPool and stop the workers left (useless now)."""
        self.broken = reason
        exc = BrokenProcessPool(reason)
        for job in list(self._cache.values()):
            try:
                _fail_job(job, exc)
            except Exception:  # noqa: BLE001 - a result that finished meanwhile
                pass
        for w in list(self._pool):
            if w.exitcode is None and not isinstance(w, _NoWorker):
                w.terminate()

    @staticmethod
    def _help_stuff_finish(inqueue: Any, task_handler: Any, size: int) -> None:
        # multiprocessing's version waits for the task queue's read lock without a timeout; a worker
        # killed while it waited for a task holds that lock for good, and terminate() -- the `with`
        # exit -- then hangs.  Wait at most 1 s for it.
        if not inqueue._rlock.acquire(timeout=1.0):
            return
        while task_handler.is_alive() and inqueue._reader.poll():
            inqueue._reader.recv()
            time.sleep(0)

    def _check_running(self) -> None:
        if self.broken is not None:
            raise BrokenProcessPool(self.broken)
        super()._check_running()  # type: ignore[misc]


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
