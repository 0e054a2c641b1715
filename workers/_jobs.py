"""What the long-running job scripts share: their inputs and stopping on SIGINT/SIGTERM.

Imported by the scripts next to it (``python workers/archive.py`` puts this folder on ``sys.path``).
"""
import argparse
import os
import re
import signal
import threading
from contextlib import contextmanager

from capar.request import RequestFileError, read_names


def job_inputs(ap: argparse.ArgumentParser, args: argparse.Namespace, prog: str) -> tuple:
    """(file name prefix, PV names) from ``--name``/``names``/``--macros``; creates ``args.directory``.

    A bad ``--name`` is a usage error; an unreadable names file prints ``prog: FILE:LINE: reason`` and
    exits with status 2.
    """
    name = args.name or os.path.splitext(os.path.basename(args.names))[0]
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        ap.error(f"--name {name!r}: use letters, digits and _ . + - only")
    try:
        names = read_names(args.names, args.macros)
    except RequestFileError as exc:
        ap.exit(2, f"{prog}: {exc}\n")
    os.makedirs(args.directory, exist_ok=True)
    return name, names


@contextmanager
def stop_on_signals():
    """An Event set by SIGINT or SIGTERM while the block runs (the previous handlers come back after)."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
