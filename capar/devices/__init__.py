"""``epics.devices``: the simple record devices (``ai``, ``ao``, ``bi``, ``bo``): a :class:`~capar.Device` with
the record's fields as attributes (``ao("IOC:out").VAL``, ``.write_state(...)``).

pyepics' synApps/areaDetector devices (``Scaler``, ``Struck``, ``MCA``, ``AD_Camera`` ...) are not part of
capar: build them on :class:`~capar.Device` with their field lists.
"""
from __future__ import annotations

from typing import Any

from ..device import Device

__all__ = ["ai", "ao", "bi", "bo"]


class _Record(Device):
    """A record as a Device: ``prefix`` is the record name (a trailing ``.`` is dropped), fields after ``.``."""

    attrs: tuple = ()

    def __init__(self, prefix: str, **kwargs: Any) -> None:
        if prefix.endswith("."):
            prefix = prefix[:-1]
        Device.__init__(self, prefix, delim=".", attrs=self.attrs, **kwargs)


class ai(_Record):
    """Analog input record."""

    attrs = ("VAL", "EGU", "HOPR", "LOPR", "PREC", "NAME", "DESC", "DTYP", "INP", "LINR", "RVAL", "ROFF", "EGUF",
             "EGUL", "AOFF", "ASLO", "ESLO", "EOFF", "SMOO", "HIHI", "LOLO", "HIGH", "LOW", "HHSV", "LLSV", "HSV",
             "LSV", "HYST")


class ao(_Record):
    """Analog output record."""

    attrs = ("OUT", "LINR", "RVAL", "ROFF", "EGUF", "EGUL", "AOFF", "ASLO", "ESLO", "EOFF", "VAL", "EGU", "HOPR",
             "LOPR", "PREC", "NAME", "DESC", "DTYP", "HIHI", "LOLO", "HIGH", "LOW", "HHSV", "LLSV", "HSV", "LSV",
             "HYST", "OMSL", "DOL", "OIF", "DRVH", "DRVL", "OROC", "OVAL")


class bi(_Record):
    """Binary input record."""

    attrs = ("INP", "ZNAM", "ONAM", "RVAL", "VAL", "EGU", "HOPR", "LOPR", "PREC", "NAME", "DESC", "DTYP")


class bo(_Record):
    """Binary output record."""

    attrs = ("DOL", "OMSL", "RVAL", "HIGH", "ZNAM", "ONAM", "VAL", "EGU", "HOPR", "LOPR", "PREC", "NAME", "DESC",
             "DTYP")


_NOT_HERE = ("Scaler", "Struck", "SRS570", "DXP", "MCA", "Mca", "MultiXMAP", "ROI", "Scan", "Transform",
             "AD_Camera", "AD_FilePlugin", "AD_ImagePlugin", "AD_OverlayPlugin", "AD_PerkinElmer")


def __getattr__(name: str) -> Any:
    if name in _NOT_HERE:
        raise AttributeError(f"capar.devices has no {name!r}: pyepics' synApps/areaDetector devices are not part "
                             f"of capar (build one on capar.Device with its field list)")
    raise AttributeError(f"module 'capar.devices' has no attribute {name!r}")
