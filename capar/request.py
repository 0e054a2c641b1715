"""Autosave-style request files (``.req``): the list of PVs a snapshot should hold.

Syntax (the subset of EPICS autosave's request files that names PVs)::

    # a comment (also after a PV name)
    $(P)ao1.VAL                      # one PV per line; macros $(NAME) or ${NAME}
    ${P}ao2
    $(P)m$(N=1)                      # $(NAME=default): the default when NAME is not defined
    file motor.req P=$(P),M=m1       # include, path relative to THIS file; its macros override ours
    file "with space.req" "P=$(P)"

Macros are expanded recursively (a value or a default may refer to other macros); ``\\$`` is a literal
``$``.  An undefined macro without a default, an unterminated reference, text after a PV name, a missing
or unreadable include and an include cycle are errors: :class:`RequestFileError` (a ``ValueError``) whose
message starts with ``FILE:LINE:``.

::

    from capar.request import read_request, parse_macros
    names = read_request("ioc.req", parse_macros("P=IOC1:,N=2"))
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence, Union

__all__ = ["RequestFileError", "RequestEntry", "read_request", "read_names", "iter_request", "parse_macros",
           "expand"]

_MAX_DEPTH = 32          # include nesting
_MAX_FILES = 10_000      # files opened by one read, includes counted at every occurrence
_MAX_EXPANSION = 64      # nested macro expansions (a self-referencing macro hits this)
_MAX_EXPANDED = 65536  # characters one expansion may produce (A1=$(A0)$(A0)... doubles per level)
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RequestFileError(ValueError):
    """A request file (or a macro string) is missing or malformed; ``str()`` is ``FILE:LINE: reason``.

    Attributes: ``file`` (str or None), ``line`` (int or None), ``reason`` (str).
    """

    def __init__(self, reason: str, file: Optional[str] = None, line: Optional[int] = None) -> None:
        self.reason, self.file, self.line = reason, file, line
        where = "" if file is None else (f"{file}:{line}: " if line is not None else f"{file}: ")
        super().__init__(where + reason)


@dataclass(frozen=True)
class RequestEntry:
    """One PV of a request file: its name (macros expanded) and where it was written."""

    name: str
    file: str
    line: int


# --------------------------------------------------------------------------------------------------
# macros

def expand(text: str, macros: Mapping[str, str], file: Optional[str] = None, line: Optional[int] = None) -> str:
    """Expand ``$(NAME)``, ``${NAME}`` and ``$(NAME=default)`` in *text* (recursively).

    Raises RequestFileError (naming *file* and *line*) for undefined macros and bad references.
    """
    return _expand(text, macros, file, line, 0)


def _expand(text: str, macros: Mapping[str, str], file: Optional[str], line: Optional[int], depth: int) -> str:
    if depth > _MAX_EXPANSION:
        raise RequestFileError("macro expansion too deep (a macro refers to itself?)", file, line)
    if "$" not in text:
        return text
    out: list[str] = []
    size = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if c != "$" or i + 1 >= n or text[i + 1] not in "({":
            out.append(c)
            i += 1
            continue
        close = ")" if text[i + 1] == "(" else "}"
        j, level = i + 2, 1
        while j < n:  # find the matching bracket (references may nest in names and defaults)
            if text[j] == "$" and j + 1 < n and text[j + 1] in "({":
                level += 1
                j += 2
                continue
            if text[j] in ")}":
                level -= 1
                if level == 0:
                    if text[j] != close:
                        raise RequestFileError(f"mismatched brackets in macro reference {text[i:j + 1]!r}",
                                               file, line)
                    break
            j += 1
        if j >= n:
            raise RequestFileError(f"unterminated macro reference {text[i:]!r}", file, line)
        body = text[i + 2:j]
        name_part, eq, default = _split_default(body)
        name = _expand(name_part, macros, file, line, depth + 1).strip()
        if not _NAME_RE.fullmatch(name):
            raise RequestFileError(f"bad macro name {name!r} in {text[i:j + 1]!r}", file, line)
        if name in macros:
            value = _expand(str(macros[name]), macros, file, line, depth + 1)
        elif eq:
            value = _expand(default, macros, file, line, depth + 1)
        else:
            raise RequestFileError(f"undefined macro $({name}) (define it with -m {name}=... "
                                   f"or give a default $({name}=...))", file, line)
        out.append(value)
        size += len(value)
        if size > _MAX_EXPANDED:
            raise RequestFileError(f"macro expansion longer than {_MAX_EXPANDED} characters", file, line)
        i = j + 1
    return "".join(out)


def _split_default(body: str) -> tuple[str, bool, str]:
    """'NAME=default' -> ('NAME', True, 'default'); an '=' inside a nested reference does not count."""
    level = 0
    for k, ch in enumerate(body):
        if ch == "$" and k + 1 < len(body) and body[k + 1] in "({":
            level += 1
        elif ch in ")}":
            level -= 1
        elif ch == "=" and level == 0:
            return body[:k], True, body[k + 1:]
    return body, False, ""


_DEF_RE = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^,\s"']*)\s*(?:,|\s+|$)""")


def parse_macros(text: Union[str, Sequence[str], None], file: Optional[str] = None,
                 line: Optional[int] = None) -> dict[str, str]:
    """``"P=IOC1:,M=m1"`` (or a list of such strings, later ones win) -> ``{"P": "IOC1:", "M": "m1"}``.

    Definitions are separated by commas or blanks; a value may be quoted (``P="a b"``) and may be empty.
    Raises RequestFileError on malformed text.
    """
    if text is None:
        return {}
    if not isinstance(text, str):
        out: dict[str, str] = {}
        for t in text:
            out.update(parse_macros(t, file, line))
        return out
    out = {}
    pos, s = 0, text.strip()
    while pos < len(s):
        if s[pos] in ", \t":
            pos += 1
            continue
        m = _DEF_RE.match(s, pos)
        if m is None:
            raise RequestFileError(f"bad macro definition {s[pos:]!r} (expected NAME=VALUE[,NAME=VALUE...])",
                                   file, line)
        value = m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            if m.group(2)[0] == '"':
                value = re.sub(r"\\(.)", r"\1", value)
        out[m.group(1)] = value
        pos = m.end()
    return out


# --------------------------------------------------------------------------------------------------
# files

def read_request(path: Union[str, os.PathLike], macros: Union[Mapping[str, str], str, None] = None,
                 search_path: Sequence[Union[str, os.PathLike]] = ()) -> list[str]:
    """PV names of the request file *path*, includes followed, macros expanded, in file order.

    macros : dict or ``"P=...,Q=..."`` string.  search_path : extra directories for includes that are not
    found next to the including file.  Duplicated names are kept (each is its own snapshot position).
    """
    return [e.name for e in iter_request(path, macros, search_path)]


def iter_request(path: Union[str, os.PathLike], macros: Union[Mapping[str, str], str, None] = None,
                 search_path: Sequence[Union[str, os.PathLike]] = ()) -> Iterator[RequestEntry]:
    """Like :func:`read_request`, yielding :class:`RequestEntry` (name, file, line) items."""
    if isinstance(macros, str):
        macros = parse_macros(macros)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RequestFileError("no such file", path)
    if os.path.isdir(path):
        raise RequestFileError("is a directory, not a request file", path)
    yield from _read(path, dict(macros or {}), [os.fspath(p) for p in search_path], [], opened=[0])


def _lines(path: str, origin: Optional[tuple[str, int]]) -> list[str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        if origin is not None:
            raise RequestFileError(f"cannot read included file {path!r}: {exc.strerror}", *origin) from None
        raise RequestFileError(f"cannot read: {exc.strerror}", path) from None
    lines = data.split(b"\n")
    out = []
    for k, raw in enumerate(lines, 1):
        try:
            out.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise RequestFileError(f"not UTF-8 text ({exc.reason} at column {exc.start + 1})", path, k) from None
    return out


def _read(path: str, macros: dict[str, str], search_path: list[str], stack: list[str],
          origin: Optional[tuple[str, int]] = None, opened: Optional[list] = None) -> Iterator[RequestEntry]:
    opened = opened if opened is not None else [0]
    opened[0] += 1
    if opened[0] > _MAX_FILES:
        raise RequestFileError(f"more than {_MAX_FILES} files read (includes fanning out?)", *(origin or (path, None)))
    real = os.path.realpath(path)
    if real in stack:
        chain = " -> ".join(os.path.basename(p) for p in stack + [real])
        raise RequestFileError(f"include cycle: {chain}", *(origin or (path, None)))
    if len(stack) >= _MAX_DEPTH:
        raise RequestFileError(f"includes nested deeper than {_MAX_DEPTH} files", *(origin or (path, None)))
    stack = stack + [real]
    for lineno, text in enumerate(_lines(path, origin), 1):
        body = text.split("#", 1)[0].strip()   # '#' is not a valid character of a record name
        if not body:
            continue
        if body.split(None, 1)[0] == "file":
            if body == "file":
                raise RequestFileError("'file' needs a file name", path, lineno)
            yield from _include(path, lineno, body[4:].strip(), macros, search_path, stack, opened)
            continue
        name = expand(body, macros, path, lineno).strip()
        if not name:
            raise RequestFileError(f"empty PV name after macro expansion of {body!r}", path, lineno)
        parts = name.split()
        if len(parts) > 1:
            raise RequestFileError(f"one PV name per line expected, got {name!r}", path, lineno)
        yield RequestEntry(name, path, lineno)


def _include(path: str, lineno: int, rest: str, macros: dict[str, str], search_path: list[str],
             stack: list[str], opened: list) -> Iterator[RequestEntry]:
    rest = expand(rest, macros, path, lineno)
    if rest.startswith(('"', "'")):
        end = rest.find(rest[0], 1)
        if end < 0:
            raise RequestFileError(f"unterminated quoted file name in 'file {rest}'", path, lineno)
        fname, defs = rest[1:end], rest[end + 1:].strip()
    else:
        parts = rest.split(None, 1)
        if not parts:
            raise RequestFileError("'file' needs a file name", path, lineno)
        fname, defs = parts[0], (parts[1] if len(parts) > 1 else "")
    if not fname:
        raise RequestFileError("'file' needs a file name", path, lineno)
    if len(defs) >= 2 and defs[0] == defs[-1] and defs[0] in "\"'":
        defs = defs[1:-1]
    child_macros = dict(macros)
    child_macros.update(parse_macros(defs, path, lineno))
    here = os.path.dirname(path)
    candidates = [fname] if os.path.isabs(fname) else [os.path.join(d, fname) for d in [here] + search_path]
    for cand in candidates:
        if os.path.isfile(cand):
            yield from _read(cand, child_macros, search_path, stack, origin=(path, lineno), opened=opened)
            return
    looked = ", ".join(os.path.dirname(c) or "." for c in candidates)
    raise RequestFileError(f"included file {fname!r} not found (looked in {looked})", path, lineno)


def read_names(path: Union[str, os.PathLike], macros: Sequence[str] = ()) -> list[str]:
    """PV names of a names or request file for job scripts: ``-m`` macro strings joined, and a
    :class:`RequestFileError` (not an empty list) when the file holds no name."""
    names = read_request(path, ",".join(macros))
    if not names:
        raise RequestFileError("no PV names", os.fspath(path))
    return names

