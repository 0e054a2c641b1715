"""The text EPICS base's ``caget``/``caput``/``camonitor``/``cainfo`` print, for ``capar get/put/monitor/info``.

Written from EPICS base's ``modules/ca/src/tools`` (``tool_lib.c``'s ``val2str``, ``print_time_val_sts``,
``dbr2str``; the tools' option handling): the same name padding (``%-30s`` for scalars when the separator is
a space), element counts before arrays, ``%g`` (or ``-e/-f/-g N``) for floating point, C escapes in strings,
``0x``/``0o``/binary integers, the ``NAME TIMESTAMP VALUE STAT SEVR`` wide form with its empty alarm fields,
and the timestamp format ``%Y-%m-%d %H:%M:%S.%06f`` in local time.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Optional, Sequence

__all__ = ["DEFAULT_TIMEOUT", "cli_timeout", "ToolFormat", "c_escape", "c_unescape", "c_unescape_raw", "epics_ns",
           "stat_text", "sevr_text",
           "time_text", "dbf_text", "dbr_text", "parse_dbr_type", "parse_mask"]

#: EPICS base's tools' default timeout (seconds), overridden by ``EPICS_CLI_TIMEOUT``
DEFAULT_TIMEOUT = 1.0

STRING, SHORT, FLOAT, ENUM, CHAR, LONG, DOUBLE = range(7)
MAX_ENUM_STATES = 16
_DBF = ("DBF_STRING", "DBF_SHORT", "DBF_FLOAT", "DBF_ENUM", "DBF_CHAR", "DBF_LONG", "DBF_DOUBLE")
_BASE = ("STRING", "SHORT", "FLOAT", "ENUM", "CHAR", "LONG", "DOUBLE")
_DBR_NAMES = {i: f"DBR_{n}" for i, n in enumerate(_BASE)}
_DBR_NAMES.update({7 + i: f"DBR_STS_{n}" for i, n in enumerate(_BASE)})
_DBR_NAMES.update({14 + i: f"DBR_TIME_{n}" for i, n in enumerate(_BASE)})
_DBR_NAMES.update({21 + i: f"DBR_GR_{n}" for i, n in enumerate(_BASE)})
_DBR_NAMES.update({28 + i: f"DBR_CTRL_{n}" for i, n in enumerate(_BASE)})
_DBR_NAMES.update({35: "DBR_PUT_ACKT", 36: "DBR_PUT_ACKS", 37: "DBR_STSACK_STRING", 38: "DBR_CLASS_NAME"})
_DBR_ALIASES = {"DBR_INT": 1, "DBR_STS_INT": 8, "DBR_TIME_INT": 15, "DBR_GR_INT": 22, "DBR_CTRL_INT": 29}

_STAT = ("NO_ALARM", "READ", "WRITE", "HIHI", "HIGH", "LOLO", "LOW", "STATE", "COS", "COMM", "TIMEOUT",
         "HWLIMIT", "CALC", "SCAN", "LINK", "SOFT", "BAD_SUB", "UDF", "DISABLE", "SIMM", "READ_ACCESS",
         "WRITE_ACCESS")
_SEVR = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")


def cli_timeout(warn: bool = False) -> float:
    """The tools' default timeout: ``EPICS_CLI_TIMEOUT`` when it holds a number, else 1 s (with *warn*, a bad
    value is reported on stderr as the tools report it)."""
    text = os.environ.get("EPICS_CLI_TIMEOUT")
    if text is not None:
        try:
            value = float(text)
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
        if warn:
            import sys

            print(f"'{text}' is not a valid timeout value (from 'EPICS_CLI_TIMEOUT' in the environment) - "
                  "ignored. (use '-h' for help.)", file=sys.stderr)
    return DEFAULT_TIMEOUT


_C_ESCAPES = {0x07: "\\a", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x0B: "\\v",
              0x5C: "\\\\", 0x27: "\\'", 0x22: '\\"', 0x00: "\\0"}


def c_escape(text: Any) -> str:
    """``epicsStrnEscapedFromRaw`` of the text's UTF-8 bytes, as the tools print in the C locale: C escapes
    for control characters, quotes and backslash, ``\\xNN`` for every other byte that is not printable
    ASCII (so ``é`` prints as ``\\xc3\\xa9``, as caget prints it)."""
    raw = text if isinstance(text, bytes) else str(text).encode("utf-8", "surrogateescape")
    out = []
    for b in raw:
        esc = _C_ESCAPES.get(b)
        out.append(esc if esc is not None else chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}")
    return "".join(out)


_RAW_ESCAPES = {"a": 0x07, "b": 0x08, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B, "\\": 0x5C,
                "'": 0x27, '"': 0x22, "0": 0x00}


def c_unescape_raw(text: str) -> bytes:
    """``epicsStrnRawFromEscaped`` on the UTF-8 bytes of *text*: ``\\a \\b \\f \\n \\r \\t \\v \\\\ \\' \\" \\0``,
    ``\\xH``/``\\xHH`` (a byte; ``\\x`` without a hex digit is dropped), any other ``\\c`` is ``c``; no octal."""
    src = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i, n = 0, len(src)
    hexdigits = b"0123456789abcdefABCDEF"
    while i < n:
        c = src[i]
        i += 1
        if c != 0x5C:
            out.append(c)
            continue
        if i >= n:
            break
        c = src[i]
        i += 1
        if c == ord("x"):
            k = 0
            u = 0
            while k < 2 and i < n and src[i] in hexdigits:
                u = u * 16 + int(chr(src[i]), 16)
                i += 1
                k += 1
            if k:
                out.append(u)
            continue
        out.append(_RAW_ESCAPES.get(chr(c), c))
    return bytes(out)


def c_unescape(text: str, c_string: bool = True) -> str:
    """:func:`c_unescape_raw` as text, up to its first NUL (*c_string*: the C string the tools write; False
    keeps every character); bytes that are not UTF-8 stay as surrogate escapes (``.encode('utf-8',
    'surrogateescape')`` gives them back)."""
    raw = c_unescape_raw(text)
    return (raw.split(b"\0", 1)[0] if c_string else raw).decode("utf-8", "surrogateescape")


def stat_text(status: int) -> str:
    """Alarm status name as the tools print it (``HWLIMIT``, ``UDF`` ...)."""
    return _STAT[status] if 0 <= status < len(_STAT) else "Illegal Status"


def sevr_text(severity: int) -> str:
    """Alarm severity name as the tools print it."""
    return _SEVR[severity] if 0 <= severity < len(_SEVR) else "Illegal Severity"


_EPICS_EPOCH = 631152000  # POSIX seconds of the EPICS epoch, 1990-01-01 UTC: a time stamp never set


def epics_ns(md: dict) -> Optional[int]:
    """The exact time stamp of pyepics-style metadata (``posixseconds``, ``nanoseconds``) as EPICS-epoch
    nanoseconds for :func:`time_text`, or None when it has none."""
    if "posixseconds" not in md or "nanoseconds" not in md:
        return None
    return (int(md["posixseconds"]) - _EPICS_EPOCH) * 1_000_000_000 + int(md["nanoseconds"])


def time_text(stamp: float, epics_ns: Optional[int] = None) -> str:
    """``%Y-%m-%d %H:%M:%S.%06f`` in local time (microseconds rounded, as ``epicsTimeToStrftime``);
    ``<undefined>`` for a time stamp never set (the EPICS epoch), as the tools print it.  *epics_ns*: the
    stamp as EPICS-epoch nanoseconds, exact (a POSIX float cannot hold nanoseconds in 2026)."""
    if epics_ns is not None:  # exact: (secs, nsec) since the EPICS epoch, as epicsTimeToStrftime has them
        secs, nsec = divmod(int(epics_ns), 1_000_000_000)
        if secs == 0 and nsec == 0:
            return "<undefined>"
        return (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs + _EPICS_EPOCH))
                + ".%06d" % (min(nsec + 500, 999_999_999) // 1000))
    if not math.isfinite(stamp) or stamp == _EPICS_EPOCH:
        return "<undefined>"
    secs = math.floor(stamp)
    micro = min(int((stamp - secs) * 1e6 + 0.5), 999_999)  # rounded, never into the next second
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs)) + f".{micro:06d}"


def dbf_text(native: int) -> str:
    """``DBF_DOUBLE`` ... for a native type number."""
    return _DBF[native] if 0 <= native < len(_DBF) else "DBF_NO_ACCESS"


def dbr_text(dbr: int) -> str:
    """``DBR_TIME_DOUBLE`` ... for a DBR type number (``DBR_INT`` spelled ``DBR_SHORT``, as ``dbr_type_to_text``)."""
    return _DBR_NAMES.get(dbr, "DBR_invalid")


def parse_dbr_type(text: str) -> Optional[int]:
    """``-d`` argument: a number or a name with or without ``DBR_``; None when invalid (35/36 refused)."""
    try:
        value = int(text)
    except ValueError:
        name = text.upper()
        if not name.startswith("DBR_"):
            name = "DBR_" + name
        value = _DBR_ALIASES.get(name, next((k for k, v in _DBR_NAMES.items() if v == name), -1))
    if value < 0 or value > 38 or value in (35, 36):
        return None
    return value


def parse_mask(text: str) -> Optional[int]:
    """camonitor ``-m``: letters ``v`` (value), ``a`` (alarm), ``l`` (log), ``p`` (property); None if bad."""
    bits = {"v": 1, "l": 2, "a": 4, "p": 8}
    mask = 0
    for ch in text:
        if ch not in bits:
            return None
        mask |= bits[ch]
    return mask or None


class ToolFormat:
    """How the tools print values: separator, float/integer formats, enums, char arrays.

    Parameters
    ----------
    sep : the output field separator (``-F``).
    float_format : a printf format for FLOAT/DOUBLE (``%g``; ``-e/-f/-g N`` give ``%-.Ne`` ...).
    int_base : ``"dec"``, ``"hex"``, ``"oct"`` or ``"bin"`` for SHORT/LONG (``-0x/-0o/-0b``).
    float_base : the same for FLOAT/DOUBLE rounded to a long (``-lx/-lo/-lb``); ``"dec"``: *float_format*.
    enum_as_nr : ENUM values as numbers (``-n``).
    char_as_str : char arrays as (escaped) text (``-S``).
    """

    def __init__(self, sep: str = " ", float_format: str = "%g", int_base: str = "dec", float_base: str = "dec",
                 enum_as_nr: bool = False, char_as_str: bool = False) -> None:
        self.sep = sep
        self.float_format = float_format
        self.int_base = int_base
        self.float_base = float_base
        self.enum_as_nr = enum_as_nr
        self.char_as_str = char_as_str

    @staticmethod
    def _long(value: int, base: str) -> str:
        v = int(value)
        v = ((v + 2**31) % 2**32) - 2**31  # a C int
        if base == "hex":
            return "0x%X" % (v & 0xFFFFFFFF)
        if base == "oct":
            return "0o%o" % (v & 0xFFFFFFFF)
        if base == "bin":
            return "0" if v == 0 else format(v & 0xFFFFFFFF, "b")
        return "%d" % v

    def element(self, x: Any, native: int, enum_strs: Optional[Sequence[str]] = None) -> str:
        """One element as ``val2str`` prints it."""
        if native == STRING:
            return c_escape(str(x))
        if native == ENUM:
            i = int(x)
            if not self.enum_as_nr and enum_strs is not None:
                if 0 <= i < len(enum_strs):
                    return c_escape(enum_strs[i])
                # the server's DBR_STRING of a state without a string: empty (16 states), else the number
                return "" if 0 <= i < MAX_ENUM_STATES else str(i)
            return self._long(i, self.int_base)  # -n: read as DBR_INT, so -0x/-0o/-0b apply
        if native in (FLOAT, DOUBLE):
            f = float(x)
            if self.float_base != "dec":
                # (dbr_long_t)(f ± 0.5): NaN and values beyond a C int convert to INT_MIN (x86's cvttsd2si)
                r = f + 0.5 if f > 0 else f - 0.5
                if not math.isfinite(r) or not -2**31 <= math.trunc(r) < 2**31:
                    return self._long(-2**31, self.float_base)
                return self._long(math.trunc(r), self.float_base)
            try:
                return self.float_format % f
            except (TypeError, ValueError):
                return "%g" % f
        if native == CHAR:
            v = int(x) & 0xFF
            return "%d" % (v - 256 if v > 127 else v)
        return self._long(int(x), self.int_base)

    def values(self, value: Any, native: int, count: Optional[int] = None,
               enum_strs: Optional[Sequence[str]] = None, counted: bool = False) -> str:
        """What follows ``NAME<sep>``: a scalar, ``N v1 v2 ...`` for arrays (or with *counted*: ``-#``), or
        the text of a char array with ``-S``.  *count* pads or cuts an array to that many elements."""
        import numpy as np

        if isinstance(value, (list, tuple, np.ndarray)):
            items = list(value.tolist() if isinstance(value, np.ndarray) else value)
        else:
            items = [value]
        if count is not None:
            pad = "" if native == STRING else 0
            items = (items + [pad] * max(0, count - len(items)))[:count]
        n = len(items)
        if self.char_as_str and native == CHAR and (counted or n > 1):
            from .ca.dbr import c_string

            return c_escape(c_string(bytes(int(x) & 0xFF for x in items)))
        body = self.sep.join(self.element(x, native, enum_strs) for x in items)
        if counted or n > 1:
            return f"{n}{self.sep}{body}"
        return body

    def name(self, name: str, n_elements: int) -> str:
        """The name column: ``%-30s`` for a scalar when the separator is a space."""
        return ("%-30s" % name) if n_elements <= 1 and self.sep == " " else name

    def alarm(self, status: int, severity: int) -> str:
        """The wide form's tail: ``<sep>STAT<sep>SEVR``, or two separators when there is no alarm."""
        if status or severity:
            return f"{self.sep}{stat_text(status)}{self.sep}{sevr_text(severity)}"
        return self.sep + self.sep
