"""The optional compiled core (``capar/ca/_core.c``): loading it, its prototypes, and which path runs.

``pip install`` / ``make`` compile ``_core.c`` where a C compiler exists (``setup.py``: an optional
extension, skipped with a warning otherwise).  It is plain C, loaded with ctypes, and calls libca through
the addresses of capar's own loaded libca (:class:`Core` hands them over in one table), so loading it
loads no libca and pins no libca ABI at build time.

Which path runs: the core when its library is found and reports this capar's ABI number, unless the
environment says ``CAPAR_CORE=0``; ``CAPAR_CORE=1`` makes a missing core an error (CI uses it, so the
accelerated tests cannot silently fall back).  :func:`accelerated` tells.  Both paths give the same
results bit for bit (tests/test_core.py).
"""
from __future__ import annotations

import ctypes
import glob
import os
from ctypes import POINTER, c_double, c_int, c_int64, c_long, c_uint, c_uint64, c_void_p
from typing import Any, Optional, Sequence

__all__ = ["Core", "library_path", "accelerated", "describe", "load", "pack_names", "ENV", "ABI"]

ENV = "CAPAR_CORE"
ABI = 1  # must equal CAPAR_CORE_ABI in _core.c
_HERE = os.path.dirname(os.path.abspath(__file__))


def library_path() -> Optional[str]:
    """Path of the compiled core next to this module (any extension-module suffix), or None."""
    found = sorted(glob.glob(os.path.join(_HERE, "_core.*.so")) + glob.glob(os.path.join(_HERE, "_core.so"))
                   + glob.glob(os.path.join(_HERE, "_core*.pyd")))
    return found[0] if found else None


def _wanted() -> Optional[bool]:
    """The environment's choice: False (CAPAR_CORE=0), True (CAPAR_CORE=1: required) or None (auto)."""
    v = os.environ.get(ENV, "").strip().lower()
    if v in ("0", "no", "off", "false"):
        return False
    if v in ("1", "yes", "on", "true"):
        return True
    return None


def _open() -> Optional[ctypes.CDLL]:
    """The core's library if present and of this capar's ABI; None otherwise (or an error if required)."""
    wanted = _wanted()
    if wanted is False:
        return None
    path = library_path()
    why = "not built (no C compiler when capar was installed?)"
    if path is not None:
        try:
            dll = ctypes.CDLL(path)
            dll.capar_core_abi.restype = c_int
            abi = dll.capar_core_abi()
            if abi == ABI:
                return dll
            why = f"{path} has ABI {abi}, this capar needs {ABI} (rebuild: make, or pip install -e .)"
        except (OSError, AttributeError) as exc:
            why = f"{path}: {exc}"
    if wanted:
        raise ImportError(f"capar: {ENV}=1 but the compiled core is unusable: {why}")
    return None


def accelerated() -> bool:
    """True when capar's compiled core runs the bulk and monitor hot loops in this process; False on the
    pure-ctypes path (no compiled core, or ``CAPAR_CORE=0``).  Loads no libca."""
    return _open() is not None


def describe() -> str:
    """One line on the path that runs: the compiled core and its file, or pure ctypes and why."""
    try:
        dll = _open()
    except ImportError as exc:
        return f"pure ctypes: {exc}"
    if dll is not None:
        return f"compiled core {os.path.basename(dll._name)}"
    if _wanted() is False:
        return f"pure ctypes: {ENV}=0"
    return "pure ctypes: no compiled core (no C compiler when capar was installed?)"


class _Fns(ctypes.Structure):
    """capar_fns in _core.c: the libca functions the core calls, by address."""

    _fields_ = [(name, c_void_p) for name in (
        "ca_create_channel", "ca_clear_channel", "ca_state", "ca_field_type", "ca_element_count",
        "ca_array_get_callback", "ca_pend_event", "ca_flush_io")]


class _RingHead(ctypes.Structure):
    """The first fields of capar_ring (read without the lock, as hints only)."""

    _fields_ = [("head", c_uint64), ("tail", c_uint64), ("overflow", c_uint64), ("wake_at", c_uint64),
                ("cap", c_uint64), ("closed", ctypes.c_int32)]


_P = c_void_p
_PROTOTYPES = {
    "capar_create": (c_long, [_P, c_long, _P, _P, _P, _P, c_uint, _P, _P]),
    "capar_states": (c_long, [_P, c_long, _P, _P]),
    "capar_info": (None, [_P, c_long, _P, _P, _P]),
    "capar_clear": (None, [_P, c_long, _P]),
    "capar_get_start": (_P, [_P, c_long, c_long, _P, _P, c_long, c_long, _P, _P]),
    "capar_get_wait": (c_long, [_P, _P, c_double, c_int]),
    "capar_get_finish": (c_int, [_P]),
    "capar_req_reap": (c_int, [_P]),
    "capar_ring_new": (_P, [_P, _P, c_uint64]),
    "capar_slots_new": (_P, [_P, c_long]),
    "capar_slot_size": (c_long, []),
    "capar_slot_set": (None, [_P, c_long, ctypes.c_int32, ctypes.c_int32]),
    "capar_ring_push": (c_int64, [_P, c_int64, _P, c_long]),
    "capar_ring_bounds": (None, [_P, POINTER(c_uint64)]),
    "capar_ring_consume": (c_uint64, [_P, c_uint64]),
    "capar_ring_wait": (c_uint64, [_P, c_uint64, c_double]),
    "capar_ring_pending": (c_uint64, [_P]),
    "capar_ring_close": (None, [_P]),
    "capar_ring_free": (None, [_P, _P]),
    "capar_decode": (None, [_P, _P, c_long, _P, c_int, _P, _P, _P, _P, _P, _P, _P]),
}


class Core:
    """The loaded core bound to one loaded libca (owned by the context registry, like the libca handle).

    ``fns`` is the address of the table of libca function addresses passed as first argument to the
    core's channel and request functions; ``on_event`` is the C subscription callback (an EventCallback).
    """

    def __init__(self, dll: ctypes.CDLL, lib: Any) -> None:
        self.dll = dll
        self.path = dll._name
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(dll, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name[len("capar_"):], fn)
        table = _Fns()
        for name, _ in _Fns._fields_:
            setattr(table, name, ctypes.cast(getattr(lib.ca, name), c_void_p).value)
        self._table = table  # kept alive: the core reads it on every call
        self.fns = ctypes.addressof(table)
        from .binding import EventCallback
        self.on_event = EventCallback(ctypes.cast(dll.capar_on_event, c_void_p).value)
        self.slot_bytes = int(self.slot_size())  # sizeof(capar_slot): PV i's slot is at slots + i * slot_bytes

    def ring_head(self, ring: int) -> _RingHead:
        """A view of the ring's counters (hints: read without its lock)."""
        return _RingHead.from_address(ring)

    def check_alloc(self, ptr: Optional[int], what: str) -> int:
        if not ptr:
            raise MemoryError(f"capar core: cannot allocate {what}")
        return ptr


def pack_names(names: Sequence[bytes]) -> tuple[bytes, Any]:
    """Names as one buffer of NUL-terminated strings and the int64 offset of each (the core's create input)."""
    import numpy as np  # not at import: loading libca does not import numpy

    offsets = np.zeros(len(names), dtype=np.int64)
    if len(names) > 1:
        np.cumsum(np.fromiter(map(len, names[:-1]), dtype=np.int64, count=len(names) - 1) + 1, out=offsets[1:])
    return b"\0".join(names) + b"\0", offsets


def load(lib: Any) -> Optional[Core]:
    """The core bound to *lib* (a :class:`~capar.ca.binding.LibCA`), or None on the pure-ctypes path."""
    dll = _open()
    return Core(dll, lib) if dll is not None else None


NO_DATA = -1  # the status _core.c's reads report for a reply without data (never an ECA code)
