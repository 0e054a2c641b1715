"""``caRepeater`` entry point: runs libca's CA repeater in this process (blocks until killed).

libca spawns an executable called ``caRepeater`` from ``PATH`` when no repeater listens on
``EPICS_CA_REPEATER_PORT``; capar installs this as that executable so a fresh machine needs no EPICS base.

libca starts it with ``fork`` + ``exec`` and the client's standard input, output and error.  A repeater
that kept them would hold the client's pipes open for as long as it lives, so ``x=$(capar get PV)``,
``subprocess.run(..., capture_output=True)``, cron jobs and ``ssh host capar get`` would wait for it
forever.  :func:`main` therefore first points fds 0-2 at ``/dev/null``, leaves the client's session and
process group (``setsid``) and its working directory, and only then loads libca.  It imports nothing but
the binding's loader (no numpy, no capar API modules): about 11 MB resident instead of 45 MB.
"""
from __future__ import annotations

import os
import sys

__all__ = ["main", "detach"]


def _open_fds() -> list[int]:
    """This process's open descriptors (/proc/self/fd; a bounded range where there is no /proc)."""
    try:
        return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    except OSError:
        return list(range(3, 256))  # not every fd up to SC_OPEN_MAX: that can be 10^9 in a container


def detach() -> None:
    """Give up the spawning client's stdio, other descriptors and session (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    for fd in _open_fds():  # libca closes them before exec; a repeater started by hand may have more
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass
    try:
        os.setsid()  # no controlling terminal: no SIGHUP/SIGINT from the client's terminal
    except OSError:
        pass  # already a session leader


def main() -> None:
    """Run the CA repeater until killed (UDP port from ``EPICS_CA_REPEATER_PORT``, default 5065).

    ``caRepeater --foreground`` keeps stdio, session and directory (for running it by hand).
    """
    foreground = "--foreground" in sys.argv[1:]
    if not foreground:
        detach()
    from .binding import load

    lib = load()
    if not foreground:
        os.chdir("/")  # do not keep the client's directory busy (after the imports: sys.path may be relative)
    try:
        lib.ca_repeater()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
