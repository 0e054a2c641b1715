"""Declarative ctypes binding to libca from the ``epicscorelibs`` wheel.

This is the only module of capar that touches ``ctypes`` prototypes.  One block per libca function:
``argtypes``, ``restype`` and, where the function returns an ECA status, an ``errcheck`` that turns a
failure into a :class:`~capar.ca.errors.CAError` at the boundary.  Functions whose status the caller
wants to inspect (``ca_pend_io``, ``ca_sg_block`` ...) are also exposed raw, under the ``raw_`` prefix.

Nothing here runs at import time: :func:`load` opens the shared library on first CA use, because merely
loading libCom makes forked children print "Undefined Behavior" warnings (see DESIGN.md, "Contexts").
The loaded :class:`LibCA` is owned by the per-process context registry (``capar.ca.context``); pyepics'
``epics.ca.libca`` (the loaded library itself) is :mod:`capar.ca.libca`.
"""
from __future__ import annotations

import ctypes
import os
import sys
from ctypes import (
    CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_int, c_long, c_short, c_uint, c_ulong,
    c_void_p,
)
from typing import Any, Callable

from . import errors

__all__ = [
    "LibCA", "load", "libca_path", "event_handler_args", "connection_handler_args",
    "exception_handler_args", "access_rights_handler_args", "vformat", "AccessRightsCallback", "EventCallback",
    "ConnectionCallback", "ExceptionCallback", "ThreadExitCallback",
    "PrintfHandler",
]

chid_t = c_void_p
evid_t = c_void_p
CA_SYNC_GID = c_uint


class event_handler_args(Structure):
    """Argument of get/put/subscription callbacks (``struct event_handler_args``)."""

    _fields_ = [
        ("usr", c_void_p),
        ("chid", c_void_p),
        ("type", c_long),
        ("count", c_long),
        ("dbr", c_void_p),
        ("status", c_int),
    ]


class connection_handler_args(Structure):
    """Argument of connection callbacks (``struct connection_handler_args``)."""

    _fields_ = [("chid", c_void_p), ("op", c_long)]


class exception_handler_args(Structure):
    """Argument of the context's exception handler."""

    _fields_ = [
        ("usr", c_void_p),
        ("chid", c_void_p),
        ("type", c_long),
        ("count", c_long),
        ("addr", c_void_p),
        ("stat", c_long),
        ("op", c_long),
        ("ctx", c_char_p),
        ("pFile", c_char_p),
        ("lineNo", c_uint),
    ]


class access_rights_handler_args(Structure):
    """``struct access_rights_handler_args``: the channel and its ``caar`` bit field (bit 0 read, bit 1 write)."""

    _fields_ = [("chid", chid_t), ("access", c_uint)]


EventCallback = CFUNCTYPE(None, event_handler_args)
AccessRightsCallback = CFUNCTYPE(None, access_rights_handler_args)
ThreadExitCallback = CFUNCTYPE(None, c_void_p)  # void (*)(void *arg) for libCom's epicsAtThreadExit
ConnectionCallback = CFUNCTYPE(None, connection_handler_args)
ExceptionCallback = CFUNCTYPE(None, exception_handler_args)
# int printf-like handler(const char *fmt, va_list args): we only see the format pointer.
PrintfHandler = CFUNCTYPE(c_int, c_char_p, c_void_p)


def _epics_lib(name: str) -> str:
    """Absolute path of ``lib<name>`` in the epicscorelibs wheel, found without importing setuptools.

    ``epicscorelibs.path`` imports ``setuptools_dso`` and with it setuptools (about 0.15 s) only to read
    the small ``epicscorelibs/lib/<name>_dsoinfo.py`` module that names the file; reading that module
    directly costs a millisecond.  Windows also needs the directory on the DLL search path.  Falls back to
    ``epicscorelibs.path`` for a wheel without dsoinfo modules.
    """
    import importlib

    try:
        info = importlib.import_module(f"epicscorelibs.lib.{name}_dsoinfo")
        path = info.sofilename
    except (ImportError, AttributeError):
        from epicscorelibs import path as ep  # imported lazily: keeps `import capar` free of shared libraries

        return ep.get_lib(name)
    if sys.platform == "win32" and hasattr(os, "add_dll_directory"):
        os.add_dll_directory(os.path.dirname(path))
    return path


def libca_path() -> str:
    """Path of ``libca`` shipped in the epicscorelibs wheel."""
    return _epics_lib("ca")


def _libcom_path() -> str:
    return _epics_lib("Com")


class LibCA:
    """capar's own handle on libca/libCom with a prototype for every function capar calls."""

    def __init__(self) -> None:
        mode = getattr(os, "RTLD_GLOBAL", 0)
        loader = ctypes.WinDLL if sys.platform == "win32" else ctypes.CDLL  # type: ignore[attr-defined]
        self.com = loader(_libcom_path(), mode=mode)
        self.ca = loader(libca_path(), mode=mode)
        self._declare()

    # -- helpers -----------------------------------------------------------------------------------
    def _fn(self, name: str, restype: Any, argtypes: list, check: bool = False) -> Callable:
        fn = getattr(self.ca, name)
        fn.restype = restype
        fn.argtypes = argtypes
        if check:
            fn.errcheck = errors.expect_eca_normal
        return fn

    def _raw(self, name: str, restype: Any) -> Callable:
        """A second function object without argtypes, for calls with ctypes arguments converted once."""
        fn = self.ca._FuncPtr((name, self.ca))
        fn.restype = restype
        return fn

    def _declare(self) -> None:
        f = self._fn
        # contexts
        self.ca_context_create = f("ca_context_create", c_int, [c_int], True)
        self.ca_context_destroy = f("ca_context_destroy", None, [])
        self.ca_current_context = f("ca_current_context", c_void_p, [])
        self.ca_attach_context = f("ca_attach_context", c_int, [c_void_p])  # caller inspects status
        self.ca_detach_context = f("ca_detach_context", None, [])
        self.ca_preemtive_callback_is_enabled = f("ca_preemtive_callback_is_enabled", c_int, [])
        self.ca_context_status = f("ca_context_status", c_int, [c_void_p, c_uint])
        self.ca_client_status = f("ca_client_status", c_int, [c_uint])
        self.ca_add_exception_event = f("ca_add_exception_event", c_int, [ExceptionCallback, c_void_p], True)
        self.ca_replace_printf_handler = f("ca_replace_printf_handler", c_int, [PrintfHandler], True)
        self.ca_get_ioc_connection_count = f("ca_get_ioc_connection_count", c_uint, [])
        # channels
        self.ca_create_channel = f(
            "ca_create_channel", c_int, [c_char_p, c_void_p, c_void_p, c_uint, POINTER(chid_t)], True)
        # ca_create_channel without errcheck (a separate function object: CDLL attributes are cached, so
        # getattr would return the errcheck'ed one above): the bulk path checks each status itself
        self.raw_ca_create_channel = self._raw("ca_create_channel", c_int)
        self.raw_ca_create_channel.argtypes = [c_char_p, c_void_p, c_void_p, c_uint, c_void_p]
        self.ca_clear_channel = f("ca_clear_channel", c_int, [chid_t])
        self.ca_state = f("ca_state", c_int, [chid_t])
        self.ca_name = f("ca_name", c_char_p, [chid_t])
        self.ca_host_name = f("ca_host_name", c_char_p, [chid_t])
        self.ca_field_type = f("ca_field_type", c_short, [chid_t])
        self.ca_element_count = f("ca_element_count", c_ulong, [chid_t])
        self.ca_read_access = f("ca_read_access", c_uint, [chid_t])
        self.ca_write_access = f("ca_write_access", c_uint, [chid_t])
        self.ca_puser = f("ca_puser", c_void_p, [chid_t])
        self.ca_set_puser = f("ca_set_puser", None, [chid_t, c_void_p])
        self.ca_replace_access_rights_event = f(
            "ca_replace_access_rights_event", c_int, [chid_t, AccessRightsCallback], True)
        self.ca_search_attempts = f("ca_search_attempts", c_uint, [chid_t])
        # get / put
        self.ca_array_get = f("ca_array_get", c_int, [c_long, c_ulong, chid_t, c_void_p])
        self.ca_array_get_callback = f(
            "ca_array_get_callback", c_int, [c_long, c_ulong, chid_t, EventCallback, c_void_p])
        self.ca_array_put = f("ca_array_put", c_int, [c_long, c_ulong, chid_t, c_void_p])
        self.ca_array_put_callback = f(
            "ca_array_put_callback", c_int, [c_long, c_ulong, chid_t, c_void_p, EventCallback, c_void_p])
        # subscriptions
        self.ca_create_subscription = f(
            "ca_create_subscription", c_int,
            [c_long, c_ulong, chid_t, c_long, EventCallback, c_void_p, POINTER(evid_t)], True)
        self.ca_clear_subscription = f("ca_clear_subscription", c_int, [evid_t])
        # event loop
        self.ca_pend_event = f("ca_pend_event", c_int, [c_double])
        self.ca_pend_io = f("ca_pend_io", c_int, [c_double])
        self.ca_test_io = f("ca_test_io", c_int, [])
        self.ca_flush_io = f("ca_flush_io", c_int, [])
        # synchronous groups (the bulk path)
        self.ca_sg_create = f("ca_sg_create", c_int, [POINTER(CA_SYNC_GID)], True)
        self.ca_sg_delete = f("ca_sg_delete", c_int, [CA_SYNC_GID])
        self.ca_sg_block = f("ca_sg_block", c_int, [CA_SYNC_GID, c_double])
        self.ca_sg_test = f("ca_sg_test", c_int, [CA_SYNC_GID])
        self.ca_sg_reset = f("ca_sg_reset", c_int, [CA_SYNC_GID])
        self.ca_sg_array_get = f("ca_sg_array_get", c_int, [CA_SYNC_GID, c_long, c_ulong, chid_t, c_void_p])
        self.ca_sg_array_put = f("ca_sg_array_put", c_int, [CA_SYNC_GID, c_long, c_ulong, chid_t, c_void_p])
        # the bulk hot path: same function without argtypes, called with ctypes objects converted once
        # (c_uint gid, c_long type, c_ulong count, c_void_p chid, c_void_p buffer) — ~40% less per call
        self.raw_ca_sg_array_get = self._raw("ca_sg_array_get", c_int)
        self.raw_ca_state = self._raw("ca_state", c_int)
        self.raw_ca_field_type = self._raw("ca_field_type", c_short)
        self.raw_ca_element_count = self._raw("ca_element_count", c_ulong)
        self.raw_ca_clear_channel = self._raw("ca_clear_channel", c_int)
        # misc
        self.ca_message = f("ca_message", c_char_p, [c_long])
        self.ca_version = f("ca_version", c_char_p, [])
        # libc's vsnprintf, to format the (format, va_list) pairs libca hands a printf handler
        libc = ctypes.CDLL(None)
        self.vsnprintf = getattr(libc, "vsnprintf", None)
        if self.vsnprintf is not None:
            self.vsnprintf.restype = c_int
            self.vsnprintf.argtypes = [c_char_p, ctypes.c_size_t, c_char_p, c_void_p]
        # libCom: run a function in the calling epicsThread when it exits
        self.epicsAtThreadExit = getattr(self.com, "epicsAtThreadExit")
        self.epicsAtThreadExit.restype = c_int
        self.epicsAtThreadExit.argtypes = [ThreadExitCallback, c_void_p]
        # ca_repeater() is exported with C++ linkage only.
        self.ca_repeater = getattr(self.ca, "_Z11ca_repeaterv")
        self.ca_repeater.restype = None
        self.ca_repeater.argtypes = []

    def close_gate(self) -> "LibCA":
        """Shut this handle: from now on every libca/libCom function called through it raises
        :class:`~capar.ca.errors.ContextError` (also through references to the handle taken earlier).

        Returns a copy that still reaches libca, for the caller's own shutdown calls.  Used at interpreter
        exit, so that a thread still running capar code cannot call into a context being destroyed.
        """
        real = LibCA.__new__(LibCA)
        real.__dict__.update(self.__dict__)
        for name, value in list(vars(self).items()):
            if isinstance(value, ctypes._CFuncPtr):  # type: ignore[attr-defined]
                setattr(self, name, _shut(name))
        return real


def vformat(lib: LibCA, fmt: bytes, args: Any) -> str:
    """The text of a C ``printf(fmt, va_list)`` call that libca made into a printf handler.

    *args* is the handler's ``va_list`` argument as received (a pointer on every supported ABI).  Consumes
    the list; text beyond 4 KiB is cut.  Without libc's ``vsnprintf`` only the format string is returned.
    """
    if lib.vsnprintf is None or not args:
        return (fmt or b"").decode("utf-8", "replace")
    buf = ctypes.create_string_buffer(4096)
    lib.vsnprintf(buf, len(buf), fmt, args)
    return buf.value.decode("utf-8", "replace")


def _shut(name: str) -> Callable:
    def shut(*args: Any) -> Any:
        raise errors.ContextError(f"{name}: capar has shut libca down (interpreter exit)")
    return shut


def load() -> LibCA:
    """Open libca and declare every prototype (called by the context registry, once per process)."""
    return LibCA()
