"""capar's version (pyepics scripts read ``epics.version.__version__``)."""
from ._version import __version__

__all__ = ["__version__"]
