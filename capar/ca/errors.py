"""ECA status codes and capar's exception hierarchy.

One root, :class:`CAError`; subclasses also derive from the builtin that fits, so ``except TimeoutError``
or ``except ValueError`` work as a user expects.  ``ChannelAccessException`` is pyepics' name for the root.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "CAError", "ChannelAccessException", "ChannelAccessGetFailure", "CASeverityException",
    "CATimeoutError", "ChannelNotConnected", "BadPVName", "CAPutError", "ContextError",
    "ECA", "eca_message", "expect_eca_normal", "raise_for_status", "seconds", "MAX_TIMEOUT",
]

#: longest wait handed to libca, seconds (~31 years): infinite timeouts are clamped to it
MAX_TIMEOUT = 1e9


def seconds(value: Any, what: str = "timeout") -> float:
    """A timeout as float seconds: negative → 0, inf → MAX_TIMEOUT; NaN or non-numbers → ValueError/TypeError.

    NaN must never reach a wait loop (``remaining <= 0`` is never true) nor libca (its epicsEvent
    wait aborts the process on it).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}: {value!r}")
    x = float(value)
    if x != x:
        raise ValueError(f"{what} must be a number of seconds, not NaN")
    return min(max(x, 0.0), MAX_TIMEOUT)


def _code(msg_no: int, severity: int) -> int:
    return (msg_no << 3) | severity


_SUCCESS, _INFO, _WARNING, _ERROR, _FATAL = 1, 3, 0, 2, 4


class ECA:
    """The ECA status codes capar handles specially (values as in ``caerr.h``)."""

    NORMAL = _code(0, _SUCCESS)
    ALLOCMEM = _code(6, _WARNING)
    TOLARGE = _code(9, _WARNING)
    TIMEOUT = _code(10, _WARNING)
    BADTYPE = _code(14, _ERROR)
    GETFAIL = _code(19, _WARNING)
    PUTFAIL = _code(20, _WARNING)
    BADCOUNT = _code(22, _WARNING)
    BADSTR = _code(23, _ERROR)
    DISCONN = _code(24, _WARNING)
    EVDISALLOW = _code(26, _ERROR)
    IODONE = _code(42, _INFO)
    IOINPROGRESS = _code(43, _INFO)
    NORDACCESS = _code(46, _WARNING)
    NOWTACCESS = _code(47, _WARNING)
    BADCHID = _code(51, _ERROR)
    BADMONID = _code(52, _ERROR)
    ISATTACHED = _code(53, _WARNING)
    NOTTHREADED = _code(57, _ERROR)


_MESSAGES = {
    ECA.NORMAL: "Normal successful completion",
    ECA.ALLOCMEM: "Unable to allocate additional dynamic memory",
    ECA.TOLARGE: "The requested data transfer is greater than available memory or EPICS_CA_MAX_ARRAY_BYTES",
    ECA.TIMEOUT: "User specified timeout on IO operation expired",
    ECA.BADTYPE: "The data type specifed is invalid",
    ECA.GETFAIL: "Channel read request failed",
    ECA.PUTFAIL: "Channel write request failed",
    ECA.BADCOUNT: "Invalid element count requested",
    ECA.BADSTR: "Invalid string",
    ECA.DISCONN: "Virtual circuit disconnect",
    ECA.EVDISALLOW: "Invalid function call from inside a CA callback",
    ECA.IODONE: "IO operations have completed",
    ECA.IOINPROGRESS: "IO operations are in progress",
    ECA.NORDACCESS: "Read access denied",
    ECA.NOWTACCESS: "Write access denied",
    ECA.BADCHID: "Invalid channel identifier",
    ECA.BADMONID: "Invalid event selection",
    ECA.ISATTACHED: "Thread is already attached to a client context",
    ECA.NOTTHREADED: "Preemptive callback not enabled - additional threads may not join context",
}


def eca_message(status: int) -> str:
    """Human-readable text for an ECA status code (no libca call needed)."""
    return _MESSAGES.get(int(status), f"ECA status {int(status)}")


class CAError(Exception):
    """Root of every capar Channel Access error (``status``: ECA code or None, ``pvname``: str or None)."""

    # class defaults: subclasses that also derive from a builtin (TimeoutError, ValueError ...) run the
    # builtin's __init__, not this one
    status: "int | None" = None
    pvname: "str | None" = None

    def __init__(self, message: str = "", status: int | None = None, pvname: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.pvname = pvname


ChannelAccessException = CAError  # pyepics' name


class CATimeoutError(TimeoutError, CAError):
    """A CA operation did not complete before its deadline."""


class ChannelNotConnected(CAError):
    """The channel is not (or no longer) connected."""


class BadPVName(ValueError, CAError):
    """The PV name is empty, too long, or not a string."""


class CAPutError(CAError):
    """A put was refused (no write access, wrong value type or shape)."""


class ContextError(CAError):
    """Misuse of CA contexts (e.g. calling into a destroyed or foreign context)."""


class ChannelAccessGetFailure(CAError):
    """A get request completed with a failure status (pyepics name)."""

    def __init__(self, message: str, chid: Any = None, status: int | None = None) -> None:
        super().__init__(message, status)
        self.chid = chid


class CASeverityException(CAError):
    """A libca call returned a status other than ECA_NORMAL (pyepics name)."""

    def __init__(self, fcn: str, msg: str, status: int | None = None) -> None:
        super().__init__(f"{fcn} returned '{msg}'", status)
        self.fcn = fcn
        self.msg = msg


_BY_STATUS: dict[int, type[CAError]] = {
    ECA.TIMEOUT: CATimeoutError,
    ECA.DISCONN: ChannelNotConnected,
    ECA.BADCHID: ChannelNotConnected,
    ECA.NOWTACCESS: CAPutError,
    ECA.PUTFAIL: CAPutError,
    ECA.BADSTR: BadPVName,
}


def raise_for_status(status: int, what: str, pvname: str | None = None) -> None:
    """Raise the exception matching an ECA *status* unless it is ECA_NORMAL."""
    if status == ECA.NORMAL:
        return
    cls = _BY_STATUS.get(status, CASeverityException)
    msg = eca_message(status)
    if cls is CASeverityException:
        exc: CAError = CASeverityException(what, msg, status)
    else:
        # one argument: OSError-derived classes (TimeoutError) would format several as errno/strerror
        exc = cls(f"{what}{' ' + repr(pvname) if pvname else ''}: {msg}")
        exc.status = status
    exc.pvname = pvname
    raise exc


def expect_eca_normal(status: int, func: Any, args: tuple) -> int:
    """ctypes ``errcheck``: turn a non-normal ECA status into an exception."""
    if status != ECA.NORMAL:
        raise_for_status(status, getattr(func, "__name__", "libca"))
    return status
