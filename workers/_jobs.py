"""What the long-running job scripts share: their inputs, stopping on SIGINT/SIGTERM, daily time series files.

Imported by the scripts next to it (``python workers/archive.py`` puts this folder on ``sys.path``).
"""
import argparse
import os
import re
import signal
import threading
import time
from contextlib import contextmanager

import capar
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


#: --format choices that write one time series file per day, and their suffixes
SERIES = {"hdf5": "h5", "parquet": "parquet"}


class DailySeries:
    """One capar.TimeSeriesWriter per UTC day (a new part past *max_mb*): DIR/NAME-YYYYmmdd[-N].EXT."""

    def __init__(self, directory, name, ext, names, max_mb):
        self.directory, self.name, self.ext, self.names = directory, name, ext, names
        self.max_bytes = max_mb * 2**20
        self.writer = None
        self.day = None
        self.part = 1

    def _path(self):
        return os.path.join(self.directory, f"{self.name}-{self.day}{'' if self.part == 1 else f'-{self.part}'}.{self.ext}")

    def _size(self):
        path = self._path()
        size = os.path.getsize(path) if os.path.exists(path) else 0
        parts = path + ".parts"
        if os.path.isdir(parts):
            size += sum(os.path.getsize(os.path.join(parts, p)) for p in os.listdir(parts))
        return size

    def _writer(self, when):
        day = time.strftime("%Y%m%d", time.gmtime(when))
        if day != self.day or (self.max_bytes and self._size() >= self.max_bytes):
            self.close()
            self.part = 1 if day != self.day else self.part + 1
            self.day = day
            self.writer = capar.TimeSeriesWriter(self._path(), self.names)
        return self.writer

    def append(self, snap, when):
        """Append a snapshot taken at *when* (POSIX s); returns the file's path."""
        self._writer(when).append(snap)
        return self._path()

    def append_batch(self, batch, when):
        """Append monitor events (a capar Batch over ``self.names``); returns the file's path."""
        self._writer(when).append_batch(batch, self.names)
        return self._path()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
