"""``epics.multiproc``'s names: processes and pools whose children each get their own clean CA context.

``from epics.multiproc import CAPool`` in pyepics code finds capar's :class:`~capar.parallel.CAPool` here.
"""
from __future__ import annotations

from .parallel import CAPool, CAProcess

__all__ = ["CAProcess", "CAPool", "clear_ca_cache"]


def clear_ca_cache() -> None:
    """Clear every channel of this process (pyepics' name for :func:`capar.ca.clear_cache`).

    capar's :class:`CAProcess`/:class:`CAPool` children never inherit a context, so they need no such call.
    """
    from .ca import clear_cache

    clear_cache()
