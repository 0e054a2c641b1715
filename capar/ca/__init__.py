"""``capar.ca``: the pyepics ``epics.ca`` surface on capar's own libca binding.

``import capar.ca`` loads no shared library; libca is opened and the initial context created on the first
CA call (or by :func:`initialize_libca`).
"""
from __future__ import annotations

from . import dbr, errors
from .channel import *  # noqa: F401,F403
from .channel import __all__ as _channel_all
from .channel import get_cache
from .context import (
    CAThread, attach_context, create_context, current_context, destroy_context, detach_context,
    finalize_libca, initialize_libca, use_initial_context, withInitialContext,
)
from .errors import (
    BadPVName, CAError, CAPutError, CASeverityException, CATimeoutError, ChannelAccessException,
    ChannelAccessGetFailure, ChannelNotConnected, ContextError,
)

#: Use preemptive callbacks (libca threads deliver events without ``pend_event``).  Set to False before the
#: first CA call to get a non-preemptive context, as in pyepics.
PREEMPTIVE_CALLBACK = True

__all__ = list(_channel_all) + [
    "dbr", "errors", "PREEMPTIVE_CALLBACK", "get_cache", "CAThread", "attach_context", "create_context",
    "current_context", "destroy_context", "detach_context", "finalize_libca", "initialize_libca",
    "use_initial_context", "withInitialContext", "BadPVName", "CAError", "CAPutError",
    "CASeverityException", "CATimeoutError", "ChannelAccessException", "ChannelAccessGetFailure",
    "ChannelNotConnected", "ContextError",
]
