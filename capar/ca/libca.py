"""pyepics' ``epics.ca.libca``: the loaded libca, as scripts call it (``ca.libca.ca_pend_event(0.1)``).

The binding itself is :mod:`capar.ca.binding`; its public names are also found here (older imports).
"""
from __future__ import annotations

import ctypes
from typing import Any

from .binding import *  # noqa: F401,F403 - the binding's public names, for imports of this module
from .binding import __all__ as _binding_all
from .binding import _epics_lib, _libcom_path  # noqa: F401 - used by capar.ca.surface and the tests
from .context import initialize_libca

__all__ = list(_binding_all)


def __getattr__(name: str) -> Any:
    """``epics.ca.libca.ca_XXX(...)`` in pyepics code, where ``ca.libca`` is the loaded library itself.

    A ``ca_``/``dbr_``/``epics`` name here is that function of capar's loaded libca (loading it and
    creating the initial context if needed), with capar's prototype but, as in pyepics, no error check
    (the status is returned) and channel ids accepted as ``ctypes.c_long``.
    """
    if not name.startswith(("ca_", "dbr_", "epics")):
        raise AttributeError(f"module 'capar.ca.libca' has no attribute {name!r}")
    lib = initialize_libca()
    for dll in (lib.ca, lib.com):
        try:
            declared = getattr(dll, name)
        except AttributeError:
            continue
        fn = dll._FuncPtr((name, dll))
        fn.restype = declared.restype
        if declared.argtypes is not None:
            fn.argtypes = declared.argtypes

        def call(*args: Any) -> Any:
            return fn(*[a.value if type(a) is ctypes.c_long else a for a in args])

        call.__name__ = name
        return call
    raise AttributeError(f"libca has no function {name!r}")
