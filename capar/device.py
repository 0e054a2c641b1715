"""``epics.device``: a group of PVs sharing a prefix, used as attributes (pyepics' ``Device``).

``Device("XX:m1", delim=".", attrs=("VAL", "RBV"))`` gives ``dev.VAL`` (a read), ``dev.VAL = 3`` (a write),
``dev.get(...)``/``dev.put(...)``, callbacks, and saving/restoring the state of its PVs.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Optional

from .ca import poll
from .pv import PV as _PV
from .pv import get_pv
from .utils import IOENCODING

__all__ = ["Device"]


class Device:
    """A set of PVs named ``prefix + delim + attr``, reachable as attributes.

    Parameters
    ----------
    prefix : str
        Common start of the PV names.
    attrs : iterable of str, optional
        Attributes (PV name suffixes) created at once, without waiting for their connection.
    nonpvs : iterable of str, optional
        Attribute names that are plain Python attributes, never PVs.
    delim : str
        Put between prefix and attribute (``"."`` for record fields).
    timeout : float, optional
        Connection timeout (seconds) of the PVs created from *attrs*.
    mutable : bool
        When true (default), reading or writing an unknown attribute creates its PV; else AttributeError.
    aliases : mapping of str to str, optional
        Other names of attributes (``{"drive": "VAL"}``).
    with_poll : bool
        Poll CA once after creating the PVs.
    """

    _prefix: Optional[str] = None
    _delim = ""
    _pvs: dict = {}
    _init = False
    _aliases: dict = {}
    _mutable = True
    _nonpvs: Any = ("_prefix", "_pvs", "_delim", "_init", "_aliases", "_mutable", "_nonpvs")

    def __init__(self, prefix: str = "", attrs: Optional[Iterable[str]] = None,
                 nonpvs: Optional[Iterable[str]] = None, delim: str = "", timeout: Optional[float] = None,
                 mutable: bool = True, aliases: Optional[Mapping[str, str]] = None,
                 with_poll: bool = True) -> None:
        self._nonpvs = list(self._nonpvs)
        self._delim = delim
        self._prefix = prefix + delim
        self._pvs = {}
        self._mutable = mutable
        self._aliases = dict(aliases or {})
        for name in nonpvs or ():
            if name not in self._nonpvs:
                self._nonpvs.append(name)
        attrs = list(attrs) if attrs is not None else None
        kw = {} if timeout is None else {"timeout": timeout}
        for attr in attrs or ():
            self.PV(attr, connect=False, **kw)
        for attr in self._aliases.values():
            if attrs is None or attr not in attrs:
                self.PV(attr, connect=False, **kw)
        if with_poll:
            poll()
        self._init = True

    def PV(self, attr: str, connect: bool = True, **kw: Any) -> _PV:
        """The PV of attribute *attr* (an alias is resolved), created with ``get_pv(name, **kw)`` if new;
        with *connect*, waits for its connection."""
        attr = self._aliases.get(attr, attr)
        if attr not in self._pvs:
            name = attr if self._prefix is None else f"{self._prefix}{attr}"
            self._pvs[attr] = get_pv(name, **kw)
        pv = self._pvs[attr]
        if connect and not pv.connected:
            pv.wait_for_connection()
        return pv

    def add_pv(self, pvname: str, attr: Optional[str] = None, **kw: Any) -> _PV:
        """Add a PV of any name as attribute *attr* (default: the name itself)."""
        attr = pvname if attr is None else attr
        self._pvs[attr] = get_pv(pvname, **kw)
        return self._pvs[attr]

    def put(self, attr: str, value: Any, wait: bool = False, use_complete: bool = False,
            timeout: float = 10) -> Optional[int]:
        """Write *value* to attribute *attr* (``PV.put``; *timeout* seconds when waiting)."""
        pv = self.PV(attr)
        pv.wait_for_connection()
        return pv.put(value, wait=wait, use_complete=use_complete, timeout=timeout)

    def get(self, attr: str, as_string: bool = False, count: Optional[int] = None,
            timeout: Optional[float] = None) -> Any:
        """Read attribute *attr* (``PV.get``; *timeout* seconds)."""
        return self.PV(attr).get(as_string=as_string, count=count, timeout=timeout)

    def save_state(self) -> dict:
        """Every attribute's current value (char arrays as text), as a dict."""
        out = {}
        for key, pv in self._pvs.items():
            out[key] = pv.get()
            if (pv.count or 0) > 1 and pv.type == "char":
                out[key] = pv.get(as_string=True)
        return out

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Write back the values of a :meth:`save_state` dict (writable attributes only)."""
        for key, val in state.items():
            if key in self._pvs and "write" in str(self._pvs[key].access):
                self._pvs[key].put(val)

    def write_state(self, fname: str, state: Optional[Mapping[str, Any]] = None) -> None:
        """Save a state (default: :meth:`save_state`) to a text file, one ``attr value`` line each
        (writable scalars and char arrays)."""
        if state is None:
            state = self.save_state()
        out = [f"#Device Saved State for {self.__class__.__name__},prefix='{self._prefix}',time={time.ctime()}"]
        for key in sorted(state):
            pv = self._pvs.get(key)
            if pv is not None and "write" in str(pv.access) and (pv.count == 1 or pv.type == "char"):
                out.append(f"{key} {state[key]}")
        out.append("")
        with open(fname, "w", encoding=IOENCODING) as fh:
            fh.write("\n".join(out))

    def read_state(self, fname: str, restore: bool = False) -> dict:
        """Read a :meth:`write_state` file into a dict (numbers converted by PV type); with *restore*,
        write the values back."""
        with open(fname, encoding=IOENCODING) as fh:
            lines = fh.readlines()
        state: dict[str, Any] = {}
        for line in lines:
            if line.startswith("#"):
                continue
            key, _, text = line.rstrip("\n").partition(" ")
            if key in self._pvs:
                kind = self._pvs[key].type
                val: Any = text
                if kind in ("double", "float"):
                    val = float(text)
                elif kind in ("int", "long", "short", "enum"):
                    val = int(text)
                state[key] = val
        if restore:
            self.restore_state(state)
        return state

    def get_all(self) -> dict:
        """Same as :meth:`save_state`."""
        return self.save_state()

    def add_callback(self, attr: str, callback: Callable, **kws: Any) -> Optional[int]:
        """Add a value callback to attribute *attr*'s PV; returns its index."""
        self.PV(attr).get()
        return self.PV(attr).add_callback(callback, **kws)

    def remove_callbacks(self, attr: str, index: Optional[int] = None) -> None:
        """Remove callback *index* of attribute *attr*'s PV."""
        self.PV(attr).remove_callback(index=index)

    def __getattr__(self, attr: str) -> Any:
        attr = self._aliases.get(attr, attr)
        if attr in self._pvs:
            return self.get(attr)
        if attr in self.__dict__:
            return self.__dict__[attr]
        if self._init and self._mutable and not attr.startswith("__"):
            pv = self.PV(attr, connect=True)
            if pv.connected:
                return pv.get()
        raise AttributeError(f"{self.__class__.__name__} has no attribute {attr}")

    def __setattr__(self, attr: str, val: Any) -> None:
        attr = self._aliases.get(attr, attr)
        if attr in self._nonpvs:
            self.__dict__[attr] = val
        elif attr in self._pvs:
            self.put(attr, val)
        elif self._init and self._mutable and not attr.startswith("__"):
            try:
                self.PV(attr)
                self.put(attr, val)
            except Exception:
                raise AttributeError(f"{self.__class__.__name__} has no attribute {attr}") from None
        elif attr in self.__dict__:
            self.__dict__[attr] = val
        elif self._init:
            raise AttributeError(f"{self.__class__.__name__} has no attribute {attr}")
        else:
            self.__dict__[attr] = val  # a subclass's own attribute set before Device.__init__ ran

    def __dir__(self) -> list[str]:
        return sorted(set(self._aliases) | set(self._pvs) | set(self._nonpvs) | set(self.__dict__)
                      | set(dir(Device)))

    def __repr__(self) -> str:
        pref = self._prefix or ""
        if pref.endswith("."):
            pref = pref[:-1]
        return f"<Device '{pref}', {len(self._pvs)} attributes>"

    @staticmethod
    def pv_property(attr: str, as_string: bool = False, wait: bool = False, timeout: float = 10.0) -> property:
        """A class-level property reading/writing attribute *attr* (for subclasses)."""
        return property(lambda self: self.get(attr, as_string=as_string),
                        lambda self, val: self.put(attr, val, wait=wait, timeout=timeout))
