"""capar — EPICS Channel Access at scale.

pyepics-compatible names (``caget``, ``caput``, ``caget_many``, ``caput_many``, ``PV``, ``ca``, ``CAThread``,
``CAProcess``, ``CAPool``) plus the bulk path (``acquire``, ``Group``, ``Snapshot``) and process-parallel
tools.  ``import capar`` loads no shared library: libca is opened on the first CA call.
"""
from __future__ import annotations

from typing import Any

from . import ca
from ._version import __version__
from .ca import CAThread, dbr, withInitialContext
from .ca.channel import poll
from .pv import PV, caget, cainfo, camonitor, camonitor_clear, caput, get_pv

__all__ = [
    "__version__", "ca", "dbr", "caget", "caput", "cainfo", "camonitor", "camonitor_clear", "caget_many",
    "caput_many", "PV", "get_pv", "poll", "CAThread", "withInitialContext", "CAProcess", "CAPool",
    "acquire", "Group", "Snapshot", "Coordinator", "Monitor",
]

_LAZY = {
    "acquire": "capar.bulk", "Group": "capar.bulk", "caget_many": "capar.bulk", "caput_many": "capar.bulk",
    "Snapshot": "capar.snapshot", "CAProcess": "capar.parallel", "CAPool": "capar.parallel",
    "Coordinator": "capar.parallel",
    "Monitor": "capar.monitor",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'capar' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
