"""aioca's DBR request codes, augmented value types and conversions, on raw DBR bytes (no ctypes, no I/O).

The value types (``ca_str``, ``ca_int``, ``ca_float``, ``ca_bytes``, ``ca_array``) and the conversion rules
are those of ``epicscorelibs.ca.dbr``, which aioca uses: same classes by name and base type, same fields
(``name``, ``ok``, ``datatype``, ``element_count``, ``status``, ``severity``, ``timestamp``, ``raw_stamp``,
ctrl limits, ``units``, ``precision``, ``enums``, ``ackt``/``acks``), same choice of scalar or array (by
the channel's element count), same string decoding.  ``epicscorelibs.ca`` itself is not imported: it opens
libca at import time, which :mod:`capar` only does on the first CA call (see DESIGN.md, "Contexts").

Decoding reads the DBR structs with precompiled :mod:`struct` formats (header and scalar value) and
``numpy.frombuffer`` (arrays), from the bytes :mod:`capar.ca.callbacks` copied out of libca's buffer.
"""
from __future__ import annotations

import datetime as _datetime
import struct
from typing import Any, Callable, Optional

import numpy

from ..ca import dbr as _cadbr

__all__ = [
    "DBR_STRING", "DBR_SHORT", "DBR_FLOAT", "DBR_ENUM", "DBR_CHAR", "DBR_LONG", "DBR_DOUBLE",
    "DBR_CHAR_STR", "DBR_CHAR_UNICODE", "DBR_ENUM_STR", "DBR_CHAR_BYTES", "DBR_PUT_ACKT", "DBR_PUT_ACKS",
    "DBR_STSACK_STRING", "DBR_CLASS_NAME", "FORMAT_RAW", "FORMAT_TIME", "FORMAT_CTRL",
    "DBE_VALUE", "DBE_LOG", "DBE_ALARM", "DBE_PROPERTY", "ca_extra_fields",
    "ca_str", "ca_bytes", "ca_unicode", "ca_int", "ca_float", "ca_array", "InvalidDatatype",
    "type_to_dbr", "value_to_dbr", "EPICS_epoch",
]

# -- codes (values of db_access.h / epicscorelibs.ca.dbr) ---------------------------------------------
DBR_STRING, DBR_SHORT, DBR_FLOAT, DBR_ENUM, DBR_CHAR, DBR_LONG, DBR_DOUBLE = range(7)
DBR_PUT_ACKT = 35       #: configure global alarm acknowledgement
DBR_PUT_ACKS = 36       #: acknowledge global alarm
DBR_STSACK_STRING = 37  #: status ack structure
DBR_CLASS_NAME = 38     #: record type
DBR_ENUM_STR = 996      #: enums as strings, native type otherwise
DBR_CHAR_BYTES = 997    #: char arrays as bytes strings
DBR_CHAR_UNICODE = 998  #: char arrays as unicode (UTF-8) strings
DBR_CHAR_STR = 999      #: char arrays as strings
DBR_TIME_STRING = 14
FORMAT_RAW, FORMAT_TIME, FORMAT_CTRL = 0, 1, 2
DBE_VALUE, DBE_LOG, DBE_ALARM, DBE_PROPERTY = 1, 2, 4, 8
EPICS_epoch = 631152000  #: seconds from 1970 to 1990

#: every field name an augmented value may carry
ca_extra_fields = [
    "name", "ok", "datatype", "element_count", "severity", "status", "raw_stamp", "timestamp", "datetime",
    "units", "upper_disp_limit", "lower_disp_limit", "upper_alarm_limit", "lower_alarm_limit",
    "upper_warning_limit", "lower_warning_limit", "upper_ctrl_limit", "lower_ctrl_limit", "precision",
    "enums",
]

ca_doc_string = """All values returned from channel access are "augmented" types with extra fields:
always ``name`` and ``ok``; ``datatype`` and ``element_count`` when ok; with FORMAT_TIME ``status``,
``severity``, ``timestamp`` (POSIX seconds, rounded to the microsecond) and ``raw_stamp`` (secs, nsec);
with FORMAT_CTRL ``status``, ``severity`` and ``units``, the display/alarm/warning/control limits and
``precision`` (floating point), or ``enums`` (ENUM channels)."""


@property  # type: ignore[misc]
def _timestamp_to_datetime(self: Any) -> _datetime.datetime:
    return _datetime.datetime.fromtimestamp(self.timestamp)


class ca_array(numpy.ndarray):
    __doc__ = ca_doc_string
    datetime = _timestamp_to_datetime

    def __pos__(self) -> numpy.ndarray:  # type: ignore[override]
        return numpy.array(self)

    __hash__ = None  # type: ignore[assignment]


class ca_str(str):
    __doc__ = ca_doc_string
    datetime = _timestamp_to_datetime

    def __pos__(self) -> str:
        return str(self)


class ca_bytes(bytes):
    __doc__ = ca_doc_string
    datetime = _timestamp_to_datetime

    def __pos__(self) -> bytes:
        return bytes(self)


ca_unicode = ca_str


class ca_int(int):
    __doc__ = ca_doc_string
    datetime = _timestamp_to_datetime


class ca_float(float):
    __doc__ = ca_doc_string
    datetime = _timestamp_to_datetime


class InvalidDatatype(Exception):
    """Invalid datatype requested."""


# -- layouts -----------------------------------------------------------------------------------------
_ELEMENT = {DBR_STRING: "40s", DBR_SHORT: "h", DBR_FLOAT: "f", DBR_ENUM: "H", DBR_CHAR: "B", DBR_LONG: "i",
            DBR_DOUBLE: "d"}
_SCALAR = {DBR_SHORT: ca_int, DBR_FLOAT: ca_float, DBR_ENUM: ca_int, DBR_CHAR: ca_int, DBR_LONG: ca_int,
           DBR_DOUBLE: ca_float}
_STR_DTYPE = numpy.dtype("S40")
_LIMITS = ("upper_disp_limit", "lower_disp_limit", "upper_alarm_limit", "upper_warning_limit",
           "lower_warning_limit", "lower_alarm_limit", "upper_ctrl_limit", "lower_ctrl_limit")


def _decode(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("UTF-8", "replace")


def _set_time(out: Any, status: int, severity: int, secs: int, nsec: int) -> None:
    out.status = status
    out.severity = severity
    secs += EPICS_epoch
    out.raw_stamp = (secs, nsec)
    out.timestamp = round(secs + nsec * 1e-9, 6)


def _attributes(dbrcode: int) -> Optional[Callable[[bytes, Any], None]]:
    """The function copying the metadata of a *dbrcode* struct onto a value (aioca's copy_attributes);
    None for the plain types, which carry none."""
    if dbrcode <= DBR_DOUBLE or dbrcode == DBR_CLASS_NAME:
        return None
    if 14 <= dbrcode <= 20:
        unpack = struct.Struct("<hhII").unpack_from

        def time_attrs(raw: bytes, out: Any) -> None:
            _set_time(out, *unpack(raw))
        return time_attrs
    if dbrcode == DBR_STSACK_STRING:
        unpack = struct.Struct("<hhhh").unpack_from

        def stsack_attrs(raw: bytes, out: Any) -> None:
            out.status, out.severity, out.ackt, out.acks = unpack(raw)
        return stsack_attrs
    native = dbrcode - 28
    if native == DBR_ENUM:
        unpack = struct.Struct("<hhh" + "26s" * _cadbr.MAX_ENUM_STATES).unpack_from

        def enum_attrs(raw: bytes, out: Any) -> None:
            status, severity, no_str, *strs = unpack(raw)
            out.status = status
            out.severity = severity
            out.enums = [_decode(s) for s in strs[:max(0, no_str)]]
        return enum_attrs
    floating = native in (DBR_FLOAT, DBR_DOUBLE)
    el = _ELEMENT[native]
    fmt = "<hhh2x8s8" + el if floating else "<hh8s8" + el
    unpack = struct.Struct(fmt).unpack_from

    def ctrl_attrs(raw: bytes, out: Any) -> None:
        fields = unpack(raw)
        out.status, out.severity = fields[0], fields[1]
        if floating:
            out.precision = fields[2]
            fields = fields[3:]
        else:
            fields = fields[2:]
        out.units = _decode(fields[0])
        for name, v in zip(_LIMITS, fields[1:]):
            setattr(out, name, v)
    return ctrl_attrs


def _value_offset(dbrcode: int) -> int:
    if dbrcode == DBR_STSACK_STRING:
        return 8
    if dbrcode == DBR_CLASS_NAME:
        return 0
    return _cadbr.value_offset(dbrcode)


def _native(dbrcode: int) -> int:
    return DBR_STRING if dbrcode in (DBR_STSACK_STRING, DBR_CLASS_NAME) else dbrcode % 7


# -- numpy type codes -> DBR (epicscorelibs' NumpyCharCodeToDbr) ----------------------------------------
_BASIC = {DBR_STRING, DBR_SHORT, DBR_FLOAT, DBR_ENUM, DBR_CHAR, DBR_LONG, DBR_DOUBLE}
_CHARCODE = {
    "b": DBR_CHAR, "h": DBR_SHORT, "i": DBR_LONG, "f": DBR_FLOAT, "d": DBR_DOUBLE, "S": DBR_STRING,
    "?": DBR_CHAR, "B": DBR_CHAR, "H": DBR_SHORT, "I": DBR_LONG, "U": DBR_STRING, "l": DBR_LONG, "L": DBR_LONG,
}
_DTYPES = {DBR_STRING: _STR_DTYPE, DBR_SHORT: numpy.dtype(numpy.int16), DBR_FLOAT: numpy.dtype(numpy.float32),
           DBR_ENUM: numpy.dtype(numpy.uint16), DBR_CHAR: numpy.dtype(numpy.uint8),
           DBR_LONG: numpy.dtype(numpy.int32), DBR_DOUBLE: numpy.dtype(numpy.float64)}


def _datatype_to_dbr(datatype: Any) -> int:
    try:
        return _CHARCODE[numpy.dtype(datatype).char]
    except Exception as error:
        raise InvalidDatatype(f'Datatype "{datatype}" not supported for channel access') from error


def _type_to_dbrcode(datatype: Any, format: int) -> tuple[int, int]:
    if datatype not in _BASIC:
        if datatype in (DBR_CHAR_STR, DBR_CHAR_BYTES, DBR_CHAR_UNICODE):
            datatype = DBR_CHAR
        elif datatype in (DBR_STSACK_STRING, DBR_CLASS_NAME):
            return datatype, datatype
        else:
            datatype = _datatype_to_dbr(datatype)
    if format == FORMAT_RAW:
        return datatype, datatype
    if format == FORMAT_TIME:
        return datatype + 14, datatype
    if format == FORMAT_CTRL:
        return (DBR_TIME_STRING, datatype) if datatype == DBR_STRING else (datatype + 28, datatype)
    raise InvalidDatatype("Format not recognised")


# -- value converters: (raw bytes, count) -> value ------------------------------------------------------
def _strings(raw: bytes, off: int, count: int) -> list[bytes]:
    size = _cadbr.MAX_STRING_SIZE
    return [raw[off + k * size:off + (k + 1) * size].split(b"\0", 1)[0] for k in range(count)]


def _string_array(strings: list, count: int, code: str) -> ca_array:
    n = max(len(s) for s in strings) if strings else 1
    result = ca_array((count,), dtype=f"{code}{n}")
    for i, s in enumerate(strings):
        result[i] = s
    return result


def _char_text(raw: bytes, off: int, count: int) -> bytes:
    return raw[off:off + count].split(b"\0", 1)[0]


def _converter(dbrcode: int, datatype: Any, element_count: int) -> Callable[[bytes, int], Any]:
    off = _value_offset(dbrcode)
    native = _native(dbrcode)
    if native == DBR_CHAR and datatype == DBR_CHAR_STR:
        return lambda raw, count: ca_str(_char_text(raw, off, count).decode("UTF-8", "replace"))
    if native == DBR_CHAR and datatype == DBR_CHAR_BYTES:
        return lambda raw, count: ca_bytes(_char_text(raw, off, count))
    if native == DBR_CHAR and datatype == DBR_CHAR_UNICODE:
        return lambda raw, count: ca_unicode(_char_text(raw, off, count).decode("UTF-8"))
    if native == DBR_STRING:
        if isinstance(datatype, type) and issubclass(datatype, bytes):
            def one(raw: bytes, count: int) -> Any:
                return ca_bytes(_strings(raw, off, 1)[0])

            def many(raw: bytes, count: int) -> Any:
                return _string_array(_strings(raw, off, count), count, "S")
        elif isinstance(datatype, type) and issubclass(datatype, str):
            def one(raw: bytes, count: int) -> Any:
                return ca_str(_strings(raw, off, 1)[0].decode("UTF-8"))

            def many(raw: bytes, count: int) -> Any:
                return _string_array([s.decode("UTF-8") for s in _strings(raw, off, count)], count, "U")
        else:
            def one(raw: bytes, count: int) -> Any:
                return ca_str(_strings(raw, off, 1)[0].decode("UTF-8", "replace"))

            def many(raw: bytes, count: int) -> Any:
                return _string_array([s.decode("UTF-8", "replace") for s in _strings(raw, off, count)],
                                     count, "U")
        return one if element_count == 1 else many
    scalar_type = _SCALAR[native]
    unpack = struct.Struct("<" + _ELEMENT[native]).unpack_from
    dtype = _DTYPES[native]

    def scalar(raw: bytes, count: int) -> Any:
        return scalar_type(unpack(raw, off)[0])

    def array(raw: bytes, count: int) -> Any:
        result = ca_array((count,), dtype=dtype)
        if count:
            result[:] = numpy.frombuffer(raw, dtype=dtype, count=count, offset=off)
        return result

    return scalar if element_count == 1 else array


def type_to_dbr(name: str, field_type: int, element_count: int, datatype: Any,
                format: int) -> tuple[int, Callable[[bytes, int, int], Any]]:
    """The DBR code to request and the function ``(raw, dbrcode, count) -> augmented value`` for a read
    of channel *name* (connected: its native *field_type* and *element_count*), as aioca's ``type_to_dbr``."""
    if datatype is None:
        datatype = field_type
        if datatype == DBR_CHAR and name[-1:] == "$":
            datatype = DBR_CHAR_STR
    elif datatype == DBR_ENUM_STR:
        datatype = field_type
        if datatype == DBR_ENUM:
            datatype = DBR_STRING
    dbrcode, base_dbrcode = _type_to_dbrcode(datatype, format)
    convert = _converter(dbrcode, datatype, element_count)
    copy_attributes = _attributes(dbrcode)

    def dbr_to_value(raw: bytes, dbrcode_in: int, count: int) -> Any:
        if dbrcode_in != dbrcode:
            raise AssertionError(f"{name}: asked for DBR type {dbrcode}, libca delivered {dbrcode_in}")
        result = convert(raw, count)
        if copy_attributes is not None:
            copy_attributes(raw, result)
        result.name = name
        result.ok = True
        result.element_count = element_count
        result.datatype = base_dbrcode
        return result

    return dbrcode, dbr_to_value


# -- Python value -> DBR (caput) ---------------------------------------------------------------------------
def _require_value(value: Any, dtype: Any) -> numpy.ndarray:
    result = numpy.require(value, requirements="C", dtype=dtype)
    if result.shape == ():
        result.shape = (1,)
    if result.ndim != 1:
        raise AssertionError("Can't put multidimensional arrays!")
    return result


def value_to_dbr(name: str, field_type: int, datatype: Any, value: Any) -> tuple[int, int, numpy.ndarray]:
    """(DBR type, count, contiguous buffer) for a put of *value* to channel *name* of native *field_type*,
    as aioca's ``value_to_dbr`` (strings without a datatype go as DBR_STRING and the IOC converts them)."""
    if datatype is None:
        if isinstance(value, (str, bytes)):
            datatype = DBR_STRING
        else:
            datatype = field_type
            if datatype == DBR_CHAR and name[-1:] == "$":
                datatype = DBR_CHAR_STR
    if datatype == DBR_CHAR_STR:
        result = numpy.frombuffer(value.encode(), dtype=numpy.uint8)
        return DBR_CHAR, len(result), numpy.ascontiguousarray(result)
    if datatype in (DBR_PUT_ACKT, DBR_PUT_ACKS):
        return datatype, 1, numpy.array([int(value)], dtype=numpy.uint16)  # dbr_put_ack?_t: unsigned short
    dbrcode = datatype if datatype in _BASIC else _datatype_to_dbr(datatype)
    dtype = _DTYPES[dbrcode]
    if dbrcode == DBR_STRING:
        try:
            result = _require_value(value, _STR_DTYPE)
        except UnicodeEncodeError:
            value = _require_value(value, None)
            result = numpy.empty(value.shape, _STR_DTYPE)
            for n, s in enumerate(value):
                result[n] = s.encode("UTF-8")
    else:
        result = _require_value(value, dtype)
    return dbrcode, len(result), result


def element_dtype(dbrcode: int) -> Optional[numpy.dtype]:
    """numpy dtype of one value element of a basic DBR code (None for others)."""
    return _DTYPES.get(dbrcode)
