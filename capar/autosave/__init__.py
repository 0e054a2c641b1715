"""``epics.autosave``: save PVs named in an autosave request file to a ``.sav`` file, and restore them.

Files are written as synApps autosave writes them (``asApp/src/save_restore.c``)::

    # autosave R5.3	Automatically generated - DO NOT MODIFY - 251205-083500
    ! 1 channel(s) not connected - or not all gets were successful
    XX:ao 3.5
    XX:mbbo 2
    XX:wf @array@ { "1" "2" "3" }
    #XX:gone
    <END>

FLOAT values as ``%.7g``, DOUBLE as ``%.14g``, ENUM as its index, other scalars as text with C escapes, arrays
as quoted elements (``\\"``, ``\\\\``, ``\\n`` escaped), a PV that could not be read commented out, and the
``<END>`` marker that says the file is complete.  Reading accepts these files, the ``@array@ [1, 2]`` arrays
that pyepics' ``save_pvs`` writes, and files without the header; a file without ``<END>`` is refused as
truncated.  The PVs are read and written through capar's bulk path (one deadline for all).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import re
import tempfile
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np

from ..ca.dbr import c_string
from ..catools import c_escape, c_unescape
from ..snapshot import SnapshotFormatError

__all__ = ["save_pvs", "restore_pvs", "AutoSaver", "read_sav", "format_sav", "SavEntry", "SavFormatError",
           "SAV_VERSION"]

#: the version text of the header line (synApps autosave's SRVERSION)
SAV_VERSION = "autosave R5.3"

_FLOAT, _ENUM, _DOUBLE, _STRING, _CHAR = 2, 3, 6, 0, 4


# -- writing -------------------------------------------------------------------------------------------

def _escape_element(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        else:
            out.append(ch)
    return "".join(out)


def _number(v: Any, ftype: int) -> str:
    x = float(v)
    if not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    return ("%.7g" if ftype == _FLOAT else "%.14g") % x


def _scalar_text(v: Any, ftype: int) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        v = c_string(bytes(v))
    if ftype in (_FLOAT, _DOUBLE) or (ftype < 0 and isinstance(v, (float, np.floating))):
        return _number(v, ftype if ftype >= 0 else _DOUBLE)
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return c_escape(str(v))


def _element_text(v: Any, ftype: int, dtype: Optional[np.dtype]) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        v = c_string(bytes(v))
    if isinstance(v, str):
        return _escape_element(v)
    if ftype == _FLOAT or (ftype < 0 and dtype is not None and dtype == np.float32):
        return _number(v, _FLOAT)
    if ftype == _DOUBLE or isinstance(v, (float, np.floating)):
        return _number(v, _DOUBLE)
    return str(int(v))


def _line(name: str, value: Any, ftype: int) -> str:
    if isinstance(value, (np.ndarray, list, tuple)):
        arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
        dtype = arr.dtype if arr.dtype.kind in "fiub" else None
        items = value.tolist() if isinstance(value, np.ndarray) else list(value)
        body = "".join(f'"{_element_text(x, ftype, dtype)}" ' for x in items)
        return f"{name} @array@ {{ {body}}}"
    return f"{name} {_scalar_text(value, ftype)}"


def format_sav(names: Sequence[str], values: Sequence[Any], ok: Sequence[bool],
               ftypes: Optional[Sequence[int]] = None, when: Optional[datetime.datetime] = None) -> str:
    """The text of a ``.sav`` file for these PVs (see the module docstring for the layout).

    ftypes : native DBR type per PV (FLOAT and DOUBLE pick the number format); without them, numpy float32
        arrays are FLOAT and other floats DOUBLE.  when : the time in the header (default: now, local).
    """
    when = when or datetime.datetime.now()
    lines = [f"# {SAV_VERSION}\tAutomatically generated - DO NOT MODIFY - {when.strftime('%y%m%d-%H%M%S')}"]
    missing = sum(1 for good in ok if not good)
    if missing:
        lines.append(f"! {missing} channel(s) not connected - or not all gets were successful")
    for i, name in enumerate(names):
        ftype = int(ftypes[i]) if ftypes is not None else -1
        if ok[i]:
            lines.append(_line(str(name), values[i], ftype))
        else:
            lines.append(f"#{name} ")
    lines.append("<END>")
    return "\n".join(lines) + "\n"


def _write_atomic(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".capar-", suffix=".sav", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.chmod(tmp, 0o666 & ~_umask())
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- reading -----------------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+\Z")


class SavFormatError(SnapshotFormatError):
    """A ``.sav`` file is truncated or malformed (the message names file and line)."""


def _scalar_value(text: str) -> Any:
    if _INT.match(text):
        return int(text)
    try:
        x = float(text)
    except ValueError:
        return c_unescape(text, c_string=False)
    return x if text.strip() == text and text else c_unescape(text, c_string=False)


def _array_elements(body: str, where: str) -> list[str]:
    items, i, n = [], 0, len(body)
    while i < n:
        ch = body[i]
        if ch.isspace():
            i += 1
            continue
        if ch != '"':
            raise SavFormatError(f"{where}: array element must start with '\"', found {body[i:i + 10]!r}")
        i += 1
        buf = []
        while True:
            if i >= n:
                raise SavFormatError(f"{where}: unterminated array element")
            c = body[i]
            if c == "\\" and i + 1 < n:
                nxt = body[i + 1]
                buf.append({"n": "\n", "r": "\r"}.get(nxt, nxt))
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                buf.append(c)
                i += 1
        items.append("".join(buf))
    return items


def _array_value(items: list[Any]) -> Any:
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
        if items and all(isinstance(x, int) for x in items):
            return np.asarray(items, dtype=np.int64)
        return np.asarray(items, dtype=np.float64)
    return [str(x) for x in items]


def _parse_array(text: str, where: str) -> Any:
    text = text.strip()
    if text.startswith("{"):
        if not text.endswith("}"):
            raise SavFormatError(f"{where}: array without its closing '}}'")
        raw = _array_elements(text[1:-1], where)
        numbers: list[Any] = []
        for r in raw:
            v = _scalar_value(r) if r.strip() == r and r else r
            numbers.append(v)
        if all(isinstance(v, (int, float)) for v in numbers):
            return _array_value(numbers)
        return raw
    if text.startswith("["):  # pyepics' save_pvs: JSON
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise SavFormatError(f"{where}: bad array: {exc}") from None
        if not isinstance(items, list):
            raise SavFormatError(f"{where}: bad array")
        return _array_value(items)
    raise SavFormatError(f"{where}: '@array@' must be followed by '{{' or '['")


class SavEntry(NamedTuple):
    """One PV of a ``.sav`` file."""

    name: str
    value: Any            #: int/float for numbers, numpy array or list of str for arrays, else text
    saved: bool           #: False for a PV the saver could not read (a ``#NAME`` line; value None)
    text: Optional[str]   #: a scalar's text as saved (C escapes undone), for string PVs; None for arrays


def read_sav(path: Union[str, os.PathLike], require_end: bool = True) -> list[SavEntry]:
    """The entries of a ``.sav`` file in file order.

    Numbers become int/float, arrays numpy arrays (or lists of str), other values text with C escapes
    undone (:class:`SavEntry`).  Raises :class:`SavFormatError` (file:line) for malformed lines and, with *require_end*, for a
    file without ``<END>`` (truncated while it was written).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="\n") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise SavFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SavFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    entries: list[SavEntry] = []
    ended = False
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        where = f"{path}:{lineno}"
        if ended:
            if line.strip():
                raise SavFormatError(f"{where}: data after <END>")
            continue
        if not line.strip() or line.startswith(("# ", "!")) or line == "#":
            continue
        if line.startswith("<END>"):
            ended = True
            continue
        if line.startswith("#"):  # a channel the saver could not read: "#NAME value"
            name = line[1:].split(" ", 1)[0]
            if name:
                entries.append(SavEntry(name, None, False, None))
            continue
        name, _, rest = line.partition(" ")
        if not name:
            raise SavFormatError(f"{where}: line starts with a space")
        if rest.startswith("@array@"):
            entries.append(SavEntry(name, _parse_array(rest[len("@array@"):], where), True, None))
        else:
            entries.append(SavEntry(name, _scalar_value(rest), True, c_unescape(rest, c_string=False)))
    if require_end and not ended:
        raise SavFormatError(f"{path}: truncated .sav file (no <END> marker after {len(entries)} PVs)")
    return entries


# -- pyepics' API --------------------------------------------------------------------------------------

def _names(request_file: str) -> list[str]:
    from ..request import read_request

    return read_request(request_file)


def _save(names: Sequence[str], save_file: str, verbose: bool, timeout: float = 5.0) -> int:
    from ..bulk import Group

    with Group(list(names), connection_timeout=timeout) as group:
        snap = group.get(timeout=timeout)
        ftypes = group.native_types()
    values = []
    for i in range(len(snap)):
        v = snap.values[i]
        if snap.ok[i] and ftypes[i] == _CHAR and str(snap.names[i]).endswith("$") and isinstance(v, np.ndarray):
            # "NAME.FIELD$": a long string read as a char array, saved as text (synApps autosave does so too)
            v = c_string(bytes(v.astype(np.uint8)))
        values.append(v)
    text = format_sav([str(n) for n in snap.names], values, snap.ok.tolist(), ftypes)
    _write_atomic(save_file, text)
    if verbose:
        for i, name in enumerate(snap.names):
            print(f"PV {name} = {values[i]}" if snap.ok[i] else f"PV {name} not connected")
    return int((~snap.ok).sum())


def save_pvs(request_file: str, save_file: str, debug: bool = False, timeout: float = 5.0) -> None:
    """Read every PV named in *request_file* (autosave ``.req``: macros, includes) and write *save_file*.

    timeout : float, seconds for connecting and reading all PVs (one deadline each).
    """
    AutoSaver(request_file).save(save_file, verbose=debug, timeout=timeout)


def restore_pvs(filepath: str, debug: bool = False, timeout: float = 5.0) -> bool:
    """Write the values of a ``.sav`` file back to their PVs (no wait for completion, as pyepics).

    PVs that do not connect within *timeout* seconds or are not writable are reported on stdout and
    skipped.  Returns True when every saved value was written.
    """
    from ..bulk import Group

    entries = [e for e in read_sav(filepath) if e.saved]
    if not entries:
        return True
    names = [e.name for e in entries]
    with Group(names, connection_timeout=timeout) as group:
        ftypes = group.native_types()
        # a string PV gets its saved text as it is ("1e5" stays "1e5"), every other PV the parsed value
        values = [e.text if ftypes[i] == _STRING and e.text is not None else e.value
                  for i, e in enumerate(entries)]
        res = group.put(values, wait=False, timeout=timeout)
    failures = 0
    for i, name in enumerate(names):
        if res.ok[i]:
            if debug:
                print(f"Setting {name} to {values[i]}")
            continue
        failures += 1
        err = str(res.error[i])
        if "not connected" in err:
            print(f"Cannot connect to {name}")
        elif "write" in err.lower() and "access" in err.lower():
            print(f"No write access to {name}")
        else:
            print(f"Error restoring {name} to {values[i]} : {err}")
    return failures == 0


class AutoSaver:
    """Saves the PVs of one request file (pyepics' ``AutoSaver``)."""

    def __init__(self, request_file: Optional[str] = None) -> None:
        self.request_file = request_file
        self.pvs: list[str] = []
        if request_file is not None:
            self.read_request_file(request_file)

    def read_request_file(self, request_file: Optional[str] = None) -> None:
        """(Re)read the PV names of the request file."""
        if request_file is not None:
            self.request_file = request_file
        self.pvs = _names(str(self.request_file))

    def save(self, save_file: Optional[str] = None, verbose: bool = False, timeout: float = 5.0) -> None:
        """Write the ``.sav`` file (default name: the request file's, with a time stamp, ``.sav``);
        *timeout* seconds for connecting and reading."""
        if save_file is None:
            base = str(self.request_file)
            if base.endswith(".req"):
                base = base[:-4]
            save_file = f"{base}_{datetime.datetime.now().strftime('%Y%b%d_%H%M%S')}.sav"
        _save(self.pvs, save_file, verbose, timeout)
        print(f"wrote {save_file}")
