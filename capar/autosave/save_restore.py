"""``epics.autosave.save_restore``: the same names as :mod:`capar.autosave`."""
from . import AutoSaver, SavFormatError, format_sav, read_sav, restore_pvs, save_pvs

__all__ = ["AutoSaver", "save_pvs", "restore_pvs", "read_sav", "format_sav", "SavFormatError"]
