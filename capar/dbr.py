"""``capar.dbr`` is :mod:`capar.ca.dbr` (pyepics scripts ``import epics.dbr`` / ``from epics import dbr``)."""
import sys

from .ca import dbr as _dbr

sys.modules[__name__] = _dbr
