"""``capar.ca``: the pyepics ``epics.ca`` surface on capar's own libca binding.

``import capar.ca`` loads no shared library and imports none of its submodules: each name is imported
from its module on first use (PEP 562).  That keeps ``caRepeater`` (:mod:`capar.ca.repeater`) and
``import capar`` small.  libca is opened and the initial context created on the first CA call (or by
:func:`initialize_libca`).
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: pyepics' switch for clearing channels and destroying the context at interpreter exit.  capar always does
#: both (a libca thread calling into a finalized interpreter would crash it), so this is informational.
AUTO_CLEANUP = True
#: pyepics' flag: numpy is available (always, for capar).
HAS_NUMPY = True

#: names of :mod:`capar.ca.channel`'s ``__all__`` (tests/test_binding.py checks that the two agree)
_CHANNEL = (
    "DEFAULT_CONNECTION_TIMEOUT", "AUTOMONITOR_MAXLENGTH", "DEFAULT_SUBSCRIPTION_MASK", "MAX_PV_NAME_LENGTH",
    "BadValue", "check_name", "preemptive_setting", "create_channel", "connect_channel", "clear_channel",
    "name", "host_name", "element_count", "field_type", "state", "isConnected", "access", "read_access",
    "write_access", "promote_type", "get", "get_complete", "get_with_metadata", "get_complete_with_metadata",
    "get_ctrlvars", "get_timevars", "get_timestamp", "get_severity", "get_precision", "get_enum_strings",
    "put", "create_subscription", "clear_subscription", "poll", "pend_io", "pend_event", "flush_io",
    "test_io", "clear_cache", "message", "version", "default_get_timeout", "encode_value", "unpack_value",
    "channel_entry", "get_cache", "replace_access_rights_event",
)
_CONTEXT = (
    "CAThread", "attach_context", "create_context", "current_context", "destroy_context", "detach_context",
    "finalize_libca", "initialize_libca", "use_initial_context", "withInitialContext",
)
_ERRORS = (
    "BadPVName", "CAError", "CAPutError", "CASeverityException", "CATimeoutError", "ChannelAccessException",
    "ChannelAccessGetFailure", "ChannelNotConnected", "ContextError",
)
#: the rest of pyepics' ca names (messages, synchronous groups, decorators): :mod:`capar.ca.surface`
_SURFACE = (
    "find_libca", "find_libCom", "replace_printf_handler", "disable_ca_messages", "enable_ca_messages",
    "context_create", "context_destroy", "client_status", "promote_fieldtype", "register_clear_cache",
    "show_cache", "write", "PySEVCHK", "withCA", "withCHID", "withConnectedCHID", "withMaybeConnectedCHID",
    "withSEVCHK", "sg_create", "sg_delete", "sg_block", "sg_test", "sg_reset", "sg_get", "sg_put", "_unpack",
)
_UTILS = ("str2bytes", "bytes2str", "strjoin", "IOENCODING")
_LAZY: dict[str, str] = {
    **{n: "capar.ca.surface" for n in _SURFACE},
    **{n: "capar.utils" for n in _UTILS},
    **{n: "capar.ca.channel" for n in _CHANNEL},
    **{n: "capar.ca.context" for n in _CONTEXT},
    **{n: "capar.ca.errors" for n in _ERRORS},
    "accelerated": "capar.ca.core",  # capar's own: which path runs the hot loops (not pyepics', not in __all__)
}
_SUBMODULES = ("dbr", "errors", "libca", "binding", "messages", "context", "channel", "bulk", "monitor", "repeater",
               "surface", "core")

__all__ = [n for n in _CHANNEL if n != "get_cache"] + [
    "dbr", "errors", "PREEMPTIVE_CALLBACK", "WITH_CA_MESSAGES", "AUTO_CLEANUP", "HAS_NUMPY", "get_cache",
    "initial_context", *_CONTEXT, *_ERRORS, *(n for n in _SURFACE if not n.startswith("_")),
]


def __getattr__(name: str) -> object:
    if name == "initial_context":  # pyepics: a module variable, None until the first context exists
        from .context import registry

        return registry().initial_context
    if name in _SUBMODULES:
        return importlib.import_module(f"capar.ca.{name}")
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'capar.ca' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _settings() -> Any:
    from .context import registry

    return registry().settings


class _CAModule(types.ModuleType):
    """``capar.ca`` itself: its two settings live in the process's context registry (read when a context
    is created), so that ``capar.ca.PREEMPTIVE_CALLBACK = False`` reaches it without a global."""

    @property
    def PREEMPTIVE_CALLBACK(self) -> bool:
        """Use preemptive callbacks (libca threads deliver events without ``pend_event``).  Set to False
        before the first CA call to get a non-preemptive context, as in pyepics."""
        return bool(_settings().preemptive)

    @PREEMPTIVE_CALLBACK.setter
    def PREEMPTIVE_CALLBACK(self, value: bool) -> None:
        _settings().preemptive = bool(value)

    @property
    def WITH_CA_MESSAGES(self) -> bool:
        """Let libca print its messages to the terminal (stderr).  False (pyepics' default): they go to the
        ``capar.ca`` logger at DEBUG level instead; see :func:`enable_ca_messages`.  Read when the first
        context is created."""
        return bool(_settings().with_ca_messages)

    @WITH_CA_MESSAGES.setter
    def WITH_CA_MESSAGES(self, value: bool) -> None:
        _settings().with_ca_messages = bool(value)


sys.modules[__name__].__class__ = _CAModule  # module properties (the documented idiom)
