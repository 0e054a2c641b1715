"""DBR types as numpy dtypes: the layout of every plain/STS/TIME/GR/CTRL struct of ``db_access.h``.

I/O-free: nothing here calls libca.  Each DBR type maps to a numpy structured dtype whose fields and offsets
are those of the C struct (the first value element included), so a buffer filled by libca decodes with
``numpy.frombuffer`` in one call, for one PV or for thousands of PVs of the same type.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "STRING", "SHORT", "INT", "FLOAT", "ENUM", "CHAR", "LONG", "DOUBLE", "NATIVE_NAMES",
    "TIME_STRING", "TIME_SHORT", "TIME_FLOAT", "TIME_ENUM", "TIME_CHAR", "TIME_LONG", "TIME_DOUBLE",
    "CTRL_STRING", "CTRL_SHORT", "CTRL_FLOAT", "CTRL_ENUM", "CTRL_CHAR", "CTRL_LONG", "CTRL_DOUBLE",
    "EPICS2UNIX_EPOCH", "MAX_STRING_SIZE", "MAX_UNITS_SIZE", "MAX_ENUM_STRING_SIZE", "MAX_ENUM_STATES",
    "CS_NEVER_CONN", "CS_PREV_CONN", "CS_CONN", "CS_CLOSED", "OP_CONN_UP", "OP_CONN_DOWN",
    "DBE_VALUE", "DBE_LOG", "DBE_ALARM", "DBE_PROPERTY",
    "native_type", "promote_type", "is_time", "is_ctrl", "dtype_of", "value_dtype", "value_offset",
    "dbr_size_n", "decode", "unpack_metadata", "to_posix", "ctrl_limits", "c_string",
]

STRING, SHORT, FLOAT, ENUM, CHAR, LONG, DOUBLE = range(7)
INT = SHORT
NATIVE_NAMES = ("STRING", "SHORT", "FLOAT", "ENUM", "CHAR", "LONG", "DOUBLE")
STS_STRING = 7
TIME_STRING, TIME_SHORT, TIME_FLOAT, TIME_ENUM, TIME_CHAR, TIME_LONG, TIME_DOUBLE = range(14, 21)
GR_STRING = 21
CTRL_STRING, CTRL_SHORT, CTRL_FLOAT, CTRL_ENUM, CTRL_CHAR, CTRL_LONG, CTRL_DOUBLE = range(28, 35)
TIME_INT, CTRL_INT = TIME_SHORT, CTRL_SHORT

EPICS2UNIX_EPOCH = 631152000.0
MAX_STRING_SIZE = 40
MAX_UNITS_SIZE = 8
MAX_ENUM_STRING_SIZE = 26
MAX_ENUM_STATES = 16

CS_NEVER_CONN, CS_PREV_CONN, CS_CONN, CS_CLOSED = 0, 1, 2, 3
OP_CONN_UP, OP_CONN_DOWN = 6, 7
DBE_VALUE, DBE_LOG, DBE_ALARM, DBE_PROPERTY = 1, 2, 4, 8

# value element dtype per native type (CA wire types; little-endian host order after libca conversion)
_VALUE = {
    STRING: np.dtype("S40"), SHORT: np.dtype(np.int16), FLOAT: np.dtype(np.float32),
    ENUM: np.dtype(np.uint16), CHAR: np.dtype(np.uint8), LONG: np.dtype(np.int32),
    DOUBLE: np.dtype(np.float64),
}

ctrl_limits = (
    "upper_disp_limit", "lower_disp_limit", "upper_alarm_limit", "upper_warning_limit",
    "lower_warning_limit", "lower_alarm_limit", "upper_ctrl_limit", "lower_ctrl_limit",
)
_STAMP = [("status", "<i2", 0), ("severity", "<i2", 2), ("secs", "<u4", 4), ("nsec", "<u4", 8)]
_STS = [("status", "<i2", 0), ("severity", "<i2", 2)]


def _mk(fields: list[tuple[str, Any, int]], itemsize: int) -> np.dtype:
    names, formats, offsets = zip(*fields)
    return np.dtype({"names": list(names), "formats": list(formats), "offsets": list(offsets),
                     "itemsize": itemsize})


def _limits(fmt: str, start: int, step: int, n: int) -> list[tuple[str, str, int]]:
    return [(name, fmt, start + i * step) for i, name in enumerate(ctrl_limits[:n])]


def _build() -> dict[int, tuple[np.dtype, int]]:
    """dtype and value offset of every DBR type 0..34 (layouts of db_access.h)."""
    t: dict[int, tuple[np.dtype, int]] = {}
    # plain
    for n, dt in _VALUE.items():
        t[n] = (_mk([("value", dt, 0)], dt.itemsize), 0)
    # STS
    sts_off = {STRING: 4, SHORT: 4, FLOAT: 4, ENUM: 4, CHAR: 5, LONG: 4, DOUBLE: 8}
    for n, off in sts_off.items():
        t[7 + n] = (_mk(_STS + [("value", _VALUE[n], off)], off + _VALUE[n].itemsize), off)
    # TIME
    time_off = {STRING: 12, SHORT: 14, FLOAT: 12, ENUM: 14, CHAR: 15, LONG: 12, DOUBLE: 16}
    for n, off in time_off.items():
        t[14 + n] = (_mk(_STAMP + [("value", _VALUE[n], off)], off + _VALUE[n].itemsize), off)
    # GR (21..27) and CTRL (28..34): nlim = 6 for GR, 8 for CTRL
    enum_fields = _STS + [("no_str", "<i2", 4), ("strs", ("S26", 16), 6), ("value", "<u2", 422)]
    for base, nlim in ((21, 6), (28, 8)):
        t[base + STRING] = t[7 + STRING]
        units = ("units", "S8", 4)
        v = 12 + 2 * nlim
        t[base + SHORT] = (_mk(_STS + [units] + _limits("<i2", 12, 2, nlim) + [("value", "<i2", v)], v + 2), v)
        v = 16 + 4 * nlim
        t[base + FLOAT] = (_mk(_STS + [("precision", "<i2", 4), ("units", "S8", 8)]
                               + _limits("<f4", 16, 4, nlim) + [("value", "<f4", v)], v + 4), v)
        t[base + ENUM] = (_mk(enum_fields, 424), 422)
        v = 12 + nlim + 1
        t[base + CHAR] = (_mk(_STS + [units] + _limits("u1", 12, 1, nlim) + [("value", "u1", v)], v + 1), v)
        v = 12 + 4 * nlim
        t[base + LONG] = (_mk(_STS + [units] + _limits("<i4", 12, 4, nlim) + [("value", "<i4", v)], v + 4), v)
        v = 16 + 8 * nlim
        t[base + DOUBLE] = (_mk(_STS + [("precision", "<i2", 4), ("units", "S8", 8)]
                                + _limits("<f8", 16, 8, nlim) + [("value", "<f8", v)], v + 8), v)
    return t


_TABLE = _build()


def native_type(ftype: int) -> int:
    """Native type (0..6) of any plain/STS/TIME/GR/CTRL DBR type."""
    if not 0 <= ftype <= 34:
        raise ValueError(f"not a value DBR type: {ftype}")
    return ftype % 7


def promote_type(ftype: int, use_time: bool = False, use_ctrl: bool = False) -> int:
    """Promote a native type to its TIME or CTRL form (CTRL wins).  As pyepics: a STRING's CTRL form is
    TIME_STRING (DBR_CTRL_STRING carries no more than status and severity; TIME_STRING adds the time)."""
    n = native_type(ftype)
    if use_ctrl:
        return 28 + n if n != STRING else TIME_STRING
    if use_time:
        return 14 + n
    return n


def is_time(ftype: int) -> bool:
    return 14 <= ftype <= 20


def is_ctrl(ftype: int) -> bool:
    return 21 <= ftype <= 34


def dtype_of(ftype: int) -> np.dtype:
    """Structured dtype of one DBR struct (first value element included)."""
    return _TABLE[ftype][0]


def value_dtype(ftype: int) -> np.dtype:
    """dtype of one value element of *ftype*."""
    return _VALUE[native_type(ftype)]


def value_offset(ftype: int) -> int:
    """Byte offset of the first value element inside the DBR struct."""
    return _TABLE[ftype][1]


def dbr_size_n(ftype: int, count: int) -> int:
    """Bytes libca writes for *count* elements of *ftype* (``dbr_size_n`` of db_access.h)."""
    dt, _ = _TABLE[ftype]
    return dt.itemsize + max(count - 1, 0) * _VALUE[native_type(ftype)].itemsize


def copy_event(args: Any) -> tuple[int, int, np.ndarray]:
    """(type, count, raw bytes) of the DBR data of a libca get/subscription callback (its
    ``event_handler_args``), copied out of libca's buffer, which is only valid during the callback."""
    size = dbr_size_n(args.type, args.count)
    raw = np.empty(size, dtype=np.uint8)
    if size:
        _ctypes.memmove(raw.ctypes.data, args.dbr, size)
    return int(args.type), int(args.count), raw


def to_posix(secs: Any, nsec: Any) -> Any:
    """EPICS (secs, nsec) since 1990 → POSIX seconds (float or float array)."""
    return np.add(np.add(secs, EPICS2UNIX_EPOCH, dtype=np.float64), np.multiply(nsec, 1e-9))


def c_string(b: bytes) -> str:
    """The text of a C string buffer: up to its first NUL, UTF-8 (undecodable bytes replaced)."""
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode(ftype: int, count: int, buf: bytes | memoryview) -> tuple[np.ndarray, np.void]:
    """Split a raw DBR buffer into (values array of *count* elements, header record)."""
    dt, off = _TABLE[ftype]
    header = np.frombuffer(buf, dtype=dt, count=1)[0]
    values = np.frombuffer(buf, dtype=_VALUE[native_type(ftype)], count=count, offset=off)
    return values, header


def unpack_metadata(ftype: int, header: np.void) -> dict[str, Any]:
    """pyepics-style metadata dict from a decoded header (TIME: status/severity/timestamp, CTRL: limits)."""
    md: dict[str, Any] = {}
    names = header.dtype.names or ()
    if "status" in names:
        md["status"] = int(header["status"])
        md["severity"] = int(header["severity"])
    if "secs" in names:
        secs, nsec = int(header["secs"]), int(header["nsec"])
        md["timestamp"] = float(to_posix(secs, nsec))
        md["posixseconds"] = secs + int(EPICS2UNIX_EPOCH)
        md["nanoseconds"] = nsec
    if "precision" in names:
        md["precision"] = int(header["precision"])
    if "units" in names:
        md["units"] = c_string(bytes(header["units"]))
    for lim in ctrl_limits:
        if lim in names:
            md[lim] = header[lim].item()
    if "no_str" in names:
        n = max(0, min(int(header["no_str"]), MAX_ENUM_STATES))
        md["enum_strs"] = tuple(c_string(bytes(s)) for s in header["strs"][:n])
    return md


# --------------------------------------------------------------------------------------------------
# the rest of pyepics' ``epics.dbr`` names that scripts use

import ctypes as _ctypes  # noqa: E402  (ctypes stays inside capar.ca)
import enum as _enum  # noqa: E402

HAS_NUMPY = True
PY64_WINDOWS = False
#: full ECA status codes as pyepics' dbr spells them (message number << 3 | severity)
ECA_NORMAL, ECA_TIMEOUT, ECA_IODONE, ECA_ISATTACHED, ECA_BADCHID = 1, 80, 339, 424, 410
CS_NEVER_SEARCH = 4
PUT_ACKT, PUT_ACKS, STSACK_STRING, CLASS_NAME = 35, 36, 37, 38
MAX_ENUMS = MAX_ENUM_STATES
#: the ctypes type of the channel ids ``ca.create_channel`` returns (``isinstance(chid, dbr.chid_t)``)
chid_t = _ctypes.c_long
short_t, ushort_t, int_t, uint_t = _ctypes.c_short, _ctypes.c_ushort, _ctypes.c_int, _ctypes.c_uint
long_t, ulong_t, float_t, double_t = _ctypes.c_long, _ctypes.c_ulong, _ctypes.c_float, _ctypes.c_double
byte_t, ubyte_t, char_t, char_p, void_p = (_ctypes.c_byte, _ctypes.c_ubyte, _ctypes.c_char, _ctypes.c_char_p,
                                           _ctypes.c_void_p)
string_t = _ctypes.c_char * MAX_STRING_SIZE
#: ctypes element type per native DBR type (pyepics ``dbr.Map``; used to size ``sg_get`` buffers)
Map = {STRING: string_t, SHORT: short_t, FLOAT: float_t, ENUM: ushort_t, CHAR: ubyte_t, LONG: int_t,
       DOUBLE: double_t}

_NAMES = {STRING: "STRING", INT: "INT", FLOAT: "FLOAT", ENUM: "ENUM", CHAR: "CHAR", LONG: "LONG",
          DOUBLE: "DOUBLE"}
_NAMES.update({base + t: pre + ("SHORT" if t == SHORT else _NAMES[t])
               for base, pre in ((TIME_STRING, "TIME_"), (CTRL_STRING, "CTRL_")) for t in range(7)})


def Name(ftype: Any, reverse: bool = False) -> Any:
    """Name of a DBR type number (``1`` -> ``'INT'``, ``20`` -> ``'TIME_DOUBLE'``, else ``'unknown'``).

    With ``reverse=True``, *ftype* is a name and its number is returned (``'unknown'`` when there is none),
    as pyepics' ``dbr.Name``.
    """
    if reverse:
        name = str(ftype).upper()
        for number, known in _NAMES.items():
            if known == name:
                return number
    return _NAMES.get(ftype, "unknown")


class DefaultIntEnum(_enum.IntEnum):
    """An IntEnum whose unknown values become members named ``UNKNOWN`` instead of raising."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        unknown = int.__new__(cls, value)  # type: ignore[call-overload]
        unknown._name_ = "UNKNOWN"
        unknown._value_ = value
        return unknown

    def __repr__(self) -> str:
        return self.name


AlarmStatus = DefaultIntEnum("AlarmStatus", [  # type: ignore[misc]
    (n, i) for i, n in enumerate((
        "NO_ALARM", "READ", "WRITE", "HIHI", "HIGH", "LOLO", "LOW", "STATE", "COS", "COMM", "TIMEOUT",
        "HW_LIMIT", "CALC", "SCAN", "LINK", "SOFT", "BAD_SUB", "UDF", "DISABLE", "SIMM", "READ_ACCESS",
        "WRITE_ACCESS"))])
AlarmSeverity = DefaultIntEnum("AlarmSeverity", [  # type: ignore[misc]
    ("NO_ALARM", 0), ("MINOR", 1), ("MAJOR", 2), ("INVALID", 3)])

__all__ += [
    "HAS_NUMPY", "PY64_WINDOWS", "ECA_NORMAL", "ECA_TIMEOUT", "ECA_IODONE", "ECA_ISATTACHED", "ECA_BADCHID",
    "CS_NEVER_SEARCH", "PUT_ACKT", "PUT_ACKS", "STSACK_STRING", "CLASS_NAME", "MAX_ENUMS", "INT", "TIME_INT",
    "CTRL_INT", "chid_t", "short_t", "ushort_t", "int_t", "uint_t", "long_t", "ulong_t", "float_t", "double_t",
    "byte_t", "ubyte_t", "char_t", "char_p", "void_p", "string_t", "Map", "Name", "DefaultIntEnum",
    "AlarmStatus", "AlarmSeverity",
]
