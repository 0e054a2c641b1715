"""Run unchanged pyepics code on capar: ``import epics`` (and ``epics.ca``, ``epics.pv`` ...) resolve to capar.

From the shell, with no edit of the script::

    python -m capar.compat script.py ARGS...     # as `python script.py ARGS...`
    python -m capar.compat -m pytest tests/      # a module, e.g. a test run of a pyepics-based suite
    python -m capar.compat -c "import epics; print(epics.caget('PV'))"

or from Python, before the first ``import epics``: ``capar.compat.install()``.

``epics`` is then the ``capar`` package itself and ``epics.X`` is ``capar.X`` (one module object each, never a
second copy).  Child processes see the same: :func:`install` puts a small ``epics`` shim package first on
``sys.path`` and on ``PYTHONPATH``, so the workers of ``CAPool``/``CAProcess``/``multiprocessing`` (which re-import
the main script) and scripts started with ``subprocess`` import capar as ``epics`` too.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Optional, Sequence

__all__ = ["install", "installed", "SHIM_PATH", "main"]

#: directory holding the ``epics`` shim package (put first on ``sys.path``/``PYTHONPATH`` by :func:`install`)
SHIM_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim")

#: pyepics module names whose capar module has another name
_RENAMED = {"epics.dbr": "capar.ca.dbr"}


class _EpicsAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Meta-path finder/loader answering ``epics`` and ``epics.X`` with the already-imported capar module."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> Optional[object]:
        if fullname != "epics" and not fullname.startswith("epics."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        name = spec.name
        target = _RENAMED.get(name) or "capar" + name[len("epics"):]
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name != target:
                raise
            raise ModuleNotFoundError(
                f"No module named {name!r}: capar (running pyepics code as 'epics') has no {target!r}; "
                f"pyepics' {name} is not part of capar's drop-in surface", name=name) from None
        # the import system stamps the new spec on the module before exec_module: keep capar's own
        self._saved = getattr(self, "_saved", {})
        self._saved[name] = (module, getattr(module, "__spec__", None), getattr(module, "__loader__", None))
        return module

    def exec_module(self, module: ModuleType) -> None:
        saved = getattr(self, "_saved", {}).pop(module.__spec__.name if module.__spec__ else "", None)
        if saved is not None:
            _, spec, loader = saved
            module.__spec__, module.__loader__ = spec, loader


def installed() -> bool:
    """True when ``import epics`` resolves to capar in this process."""
    return any(isinstance(f, _EpicsAlias) for f in sys.meta_path)


def install(children: bool = True) -> None:
    """Make ``import epics`` (and every ``epics.X``) import capar in this process (idempotent).

    Parameters
    ----------
    children : bool
        Also for processes started from this one: put :data:`SHIM_PATH` first on ``sys.path`` (handed to
        multiprocessing children) and on ``PYTHONPATH`` (inherited by subprocesses).
    """
    if sys.modules.get("epics") is not None and not installed():
        mod = sys.modules["epics"]
        shim = str(getattr(mod, "__file__", "") or "").startswith(SHIM_PATH)
        if not shim and not getattr(mod, "__name__", "").startswith("capar"):
            raise RuntimeError("pyepics' 'epics' is already imported in this process: call "
                               "capar.compat.install() before the first 'import epics'")
    if not installed():
        sys.meta_path.insert(0, _EpicsAlias())
    if children:
        if SHIM_PATH not in sys.path:
            sys.path.insert(0, SHIM_PATH)
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if SHIM_PATH not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([SHIM_PATH, *parts])


_USAGE = """usage: python -m capar.compat SCRIPT [ARGS...]
       python -m capar.compat -m MODULE [ARGS...]
       python -m capar.compat -c CODE [ARGS...]

Runs unchanged pyepics code on capar: 'import epics' imports capar (here and in child processes)."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m capar.compat``; runs a script, a module (-m) or code (-c) as ``__main__``."""
    import runpy

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    install()
    if args[0] == "-m" and len(args) > 1:
        sys.argv = [args[1], *args[2:]]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "-c" and len(args) > 1:
        sys.argv = ["-c", *args[2:]]
        sys.path.insert(0, "")
        main_mod = ModuleType("__main__")
        main_mod.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = main_mod
        exec(compile(args[1], "<string>", "exec"), main_mod.__dict__)
    elif args[0].startswith("-"):
        print(_USAGE, file=sys.stderr)
        return 2
    else:
        script = args[0]
        sys.argv = [script, *args[1:]]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")
    return 0
