"""``epics.utils``'s names: text encoding helpers (pyepics scripts import them from here or ``epics.ca``)."""
from __future__ import annotations

import os
from typing import Any, Sequence

__all__ = ["IOENCODING", "str2bytes", "bytes2str", "strjoin", "clib_search_path"]

#: text encoding of PV strings: ``PYEPICS_ENCODING``, else ``PYTHONIOENCODING``, else UTF-8 (as pyepics)
IOENCODING = os.environ.get("PYEPICS_ENCODING", os.environ.get("PYTHONIOENCODING", "utf-8"))


def str2bytes(st1: Any) -> bytes:
    """Text to bytes in :data:`IOENCODING` (bytes pass through)."""
    if isinstance(st1, bytes):
        return st1
    return bytes(st1, IOENCODING)


def bytes2str(st1: Any) -> str:
    """Bytes to text in :data:`IOENCODING`; undecodable bytes are replaced (pyepics guesses a charset
    with ``charset_normalizer`` when it is installed, else raises); other objects go through ``str()``."""
    if isinstance(st1, str):
        return st1
    if isinstance(st1, bytes):
        try:
            return str(st1, IOENCODING)
        except UnicodeDecodeError:
            return st1.decode(IOENCODING, "replace")
    return str(st1)


def strjoin(sep: Any, seq: Sequence[Any]) -> str:
    """Join text or bytes items with *sep*; a sequence of bytes ends at its first ``b"\\x00"`` item."""
    if isinstance(sep, bytes):
        sep = bytes2str(sep)
    if len(seq) == 0:
        return ""
    if isinstance(seq[0], bytes):
        items = []
        for item in seq:
            if item == b"\x00":
                break
            items.append(bytes2str(item))
        seq = items
    return sep.join(seq)


def clib_search_path(lib: str) -> str:
    """Path of capar's libca (``lib='ca'``) or libCom (``'Com'``), from the ``epicscorelibs`` wheel.

    pyepics returns a path inside its own bundled ``clibs``; capar has no bundled copy.
    """
    from .ca.surface import find_libca, find_libCom

    return find_libca() if lib == "ca" else find_libCom()
