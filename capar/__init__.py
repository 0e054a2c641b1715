"""capar — EPICS Channel Access at scale.

pyepics-compatible names (``caget``, ``caput``, ``caget_many``, ``caput_many``, ``PV``, ``ca``, ``CAThread``,
``CAProcess``, ``CAPool``) plus the bulk path (``acquire``, ``Group``, ``Snapshot``) and process-parallel
tools.  ``import capar`` loads no shared library: libca is opened on the first CA call.
"""
from __future__ import annotations

from ._version import __version__

import time  # noqa: F401  (pyepics' `from epics import *` hands scripts the time module; some rely on it)

__all__ = [
    "__version__", "ca", "dbr", "caget", "caput", "cainfo", "camonitor", "camonitor_clear", "caget_many",
    "caput_many", "PV", "get_pv", "poll", "CAThread", "withInitialContext", "CAProcess", "CAPool",
    "acquire", "Group", "Snapshot", "Coordinator", "Monitor", "TimeSeriesWriter", "read_series",
    # the rest of what pyepics' `from epics import *` gives a script
    "Alarm", "Device", "Motor", "NO_ALARM", "MINOR_ALARM", "MAJOR_ALARM", "INVALID_ALARM", "alarm", "device",
    "motor", "multiproc", "pv", "time", "utils", "version",
]

# alarm severities (pyepics' top-level constants)
NO_ALARM, MINOR_ALARM, MAJOR_ALARM, INVALID_ALARM = 0, 1, 2, 3

# Every name is imported on first use (PEP 562): `import capar` costs about a millisecond and imports
# neither numpy nor any binding module, so `caRepeater` and commands that need little stay small and fast.
_LAZY = {
    "ca": "capar.ca", "dbr": "capar.ca.dbr",
    "CAThread": "capar.ca.context", "withInitialContext": "capar.ca.context", "poll": "capar.ca.channel",
    "PV": "capar.pv", "caget": "capar.pv", "cainfo": "capar.pv", "camonitor": "capar.pv",
    "camonitor_clear": "capar.pv", "caput": "capar.pv", "get_pv": "capar.pv",
    "acquire": "capar.bulk", "Group": "capar.bulk", "caget_many": "capar.bulk", "caput_many": "capar.bulk",
    "Snapshot": "capar.snapshot", "CAProcess": "capar.parallel", "CAPool": "capar.parallel",
    "Coordinator": "capar.parallel", "DaskCoordinator": "capar.parallel.cluster",  # not in __all__: extra
    "Monitor": "capar.monitor", "TimeSeriesWriter": "capar.series", "read_series": "capar.series",
    "Alarm": "capar.alarm", "Device": "capar.device", "Motor": "capar.motor",
}


def _forkserver_by_default() -> None:
    """Make ``forkserver`` multiprocessing's *default* start method on Linux (Python 3.14's own default).

    The seed's ``multiprocessing.Queue()``, ``Lock()``, ``Event()``, ``Value()`` ... are created in the
    default context; under Python < 3.14 that is ``fork``, whose semaphores cannot be handed to the
    forkserver children of :class:`CAProcess`/:class:`CAPool` ("A SemLock created in a fork context is
    being shared with a process in a spawn context").  Only the default changes: a program that calls
    ``multiprocessing.set_start_method(...)`` (before or after ``import capar``) keeps its choice, and
    ``CAPAR_KEEP_START_METHOD=1`` in the environment leaves the default alone.
    """
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("CAPAR_KEEP_START_METHOD", "") not in ("", "0"):
        return
    if "multiprocessing.context" in sys.modules:
        _prefer_forkserver(sys.modules["multiprocessing.context"])
    else:  # patch it when (if ever) the program imports multiprocessing: `import capar` stays light
        from importlib.machinery import PathFinder  # imported now, not under the import lock later

        sys.meta_path.insert(0, _AfterImport("multiprocessing.context", _prefer_forkserver, PathFinder))


def _prefer_forkserver(mpc: object) -> None:
    default = getattr(mpc, "_default_context", None)
    concrete = getattr(mpc, "_concrete_contexts", {}).get("forkserver")
    if concrete is not None and getattr(default, "_actual_context", "set") is None:
        default._default_context = concrete  # type: ignore[union-attr]


class _AfterImport:
    """A one-shot meta-path finder: runs ``hook(module)`` right after module *name* is first executed.

    It stays in ``sys.meta_path`` once used (a string comparison per import): removing it could make
    another thread's import, which is walking the list, skip the next finder.
    """

    def __init__(self, name: str, hook: object, path_finder: object) -> None:
        self.name, self.hook, self.path_finder, self.done = name, hook, path_finder, False

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != self.name or self.done:
            return None
        self.done = True
        spec = self.path_finder.find_spec(fullname, path)  # type: ignore[attr-defined]
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return None  # let the normal machinery import it, unpatched
        exec_module, hook = loader.exec_module, self.hook

        def exec_then_hook(module: object) -> None:
            exec_module(module)
            hook(module)  # type: ignore[operator]

        loader.exec_module = exec_then_hook
        return spec


_forkserver_by_default()


#: submodules reachable as attributes after a bare `import capar` (pyepics scripts use `epics.pv.get_pv`)
_SUBMODULES = ("pv", "bulk", "snapshot", "monitor", "parallel", "request", "testing", "cli", "demo", "alarm",
               "device", "motor", "multiproc", "utils", "autosave", "version", "compat", "devices")


def __getattr__(name: str) -> object:
    mod = _LAZY.get(name) or (f"capar.{name}" if name in _SUBMODULES else None)
    if mod is None:
        raise AttributeError(f"module 'capar' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(mod)
    value = module if mod.endswith(f".{name}") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
