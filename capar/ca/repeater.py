"""``caRepeater`` entry point: runs libca's CA repeater in this process (blocks forever).

libca spawns an executable called ``caRepeater`` from ``PATH`` when no repeater listens on
``EPICS_CA_REPEATER_PORT``; capar installs this as that executable so a fresh machine needs no EPICS base.
"""
from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Run the CA repeater until killed (port from ``EPICS_CA_REPEATER_PORT``, default 5065)."""
    from .libca import load

    lib = load()
    try:
        lib.ca_repeater()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
