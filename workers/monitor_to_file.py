"""Job script: monitor PVs and stream every event to NPZ or CSV chunk files, rotating every N events or T seconds.

    python workers/monitor_to_file.py names.txt /data/mon [--format npz|csv] [--rotate-events 100000]
                                      [--rotate-seconds 60] [--count N] [--seconds T] [--name NAME]
    python workers/monitor_to_file.py names.txt /data/mon --format hdf5|parquet [--max-mb 2000]

With ``--format hdf5`` or ``parquet`` each chunk is one crash-safe append to ONE time series file per UTC
day, ``DIR/NAME-YYYYmmdd.h5`` (``.parquet``; a new part ``-2``, ``-3`` ... past ``--max-mb``), read back with
:func:`capar.read_series` (see :class:`capar.TimeSeriesWriter`).

One ``capar.Monitor`` subscribes to every PV; its batches are cut into chunks of at most ``--rotate-events``
events (or what arrived in ``--rotate-seconds``), each written atomically (temporary ``.capar-*`` file +
rename) as ``DIR/NAME-YYYYmmdd-HHMMSS-SEQ.EXT`` (UTC time the chunk started, SEQ counts from 000001).

A chunk holds one row per event, in arrival order:
  NPZ: ``names`` (the monitored PV names), ``index`` (int64, position in names), ``timestamp`` (float64,
  POSIX s), ``value`` (float64; NaN for strings, arrays, connection events), ``text`` (str: the value of
  string/array events, arrays as JSON), ``status``/``severity`` (int16), ``kind`` (int8: 0 value,
  1 connected, 2 disconnected) and ``overflow`` (events dropped before this chunk because the queue was full).
  CSV: a ``# capar-monitor-chunk-1 overflow=N`` line, then ``name,timestamp,kind,value,status,severity``
  rows (value: the number, the string, or the array as JSON).
Stops after ``--count`` value events, ``--seconds`` seconds, or on SIGINT/SIGTERM; the pending chunk is
written first.  Exit status 0, 1 when some PVs never connected (listed on stderr), 2 for a bad command
line or names file.
"""
import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

import capar
from capar.monitor import Batch
from _jobs import SERIES, DailySeries, job_inputs, stop_on_signals

FORMAT = "capar-monitor-chunk-1"


def as_text(v):
    """The value of a string/array event as text ('' for numeric scalars)."""
    if v is None or isinstance(v, (int, float, np.integer, np.floating)):
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return json.dumps(v)


class ChunkWriter:
    """Accumulates events; ``flush()`` writes them as one chunk file (temporary file + rename)."""

    def __init__(self, directory, name, fmt, names, max_mb=0.0):
        self.directory, self.name, self.fmt = directory, name, fmt
        self.names = list(names)
        self.seq = 0
        self.files = []
        # hdf5/parquet: each chunk is one append to the day's time series file instead of a file of its own
        self.series = DailySeries(directory, name, SERIES[fmt], self.names, max_mb) if fmt in SERIES else None
        self._reset()

    def _reset(self):
        self.cols = {k: [] for k in ("index", "timestamp", "value", "status", "severity", "kind")}
        self.text = []
        self.objs = []
        self.overflow = 0
        self.started = time.time()
        self.started_mono = time.monotonic()

    def __len__(self):
        return sum(len(c) for c in self.cols["index"])

    def add(self, batch, a, b):
        """Events a..b-1 of *batch*."""
        for k in self.cols:
            self.cols[k].append(np.asarray(getattr(batch, k)[a:b]))
        if batch.values is not None:
            self.text.extend(as_text(v) for v in batch.values[a:b])
            self.objs.extend(batch.values[a:b])
        else:
            self.text.extend([""] * (b - a))
            self.objs.extend([None] * (b - a))

    def flush(self):
        n = len(self)
        if n == 0 and not self.overflow:
            self._reset()
            return None
        self.seq += 1
        if self.series is not None:
            cols = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in self.cols.items()}
            batch = Batch(
                index=cols["index"].astype(np.int64), value=cols["value"].astype(float),
                timestamp=cols["timestamp"].astype(float), status=cols["status"].astype(np.int16),
                severity=cols["severity"].astype(np.int16), kind=cols["kind"].astype(np.int8),
                values=self.objs if any(o is not None for o in self.objs) else None, overflow=self.overflow)
            path = self.series.append_batch(batch, time.time())
            if path not in self.files:
                self.files.append(path)
            self._reset()
            return path, n
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.started))
        path = os.path.join(self.directory, f"{self.name}-{stamp}-{self.seq:06d}.{self.fmt}")
        cols = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in self.cols.items()}
        fd, tmp = tempfile.mkstemp(prefix=".capar-", suffix="." + self.fmt, dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                if self.fmt == "npz":
                    np.savez(fh, format=np.asarray(FORMAT), names=np.asarray(self.names, dtype=str),
                             index=cols["index"].astype(np.int64), timestamp=cols["timestamp"].astype(float),
                             value=cols["value"].astype(float), text=np.asarray(self.text, dtype=str),
                             status=cols["status"].astype(np.int16), severity=cols["severity"].astype(np.int16),
                             kind=cols["kind"].astype(np.int8), overflow=np.asarray(self.overflow))
                else:
                    buf = io.StringIO()
                    buf.write(f"# {FORMAT} overflow={self.overflow}\n")
                    w = csv.writer(buf, lineterminator="\n")
                    w.writerow(["name", "timestamp", "kind", "value", "status", "severity"])
                    for i, ts, kind, v, txt, st, sv in zip(cols["index"].tolist(), cols["timestamp"].tolist(),
                                                          cols["kind"].tolist(), cols["value"].tolist(),
                                                          self.text, cols["status"].tolist(),
                                                          cols["severity"].tolist()):
                        w.writerow([self.names[i], repr(ts), kind, txt if txt else ("" if math.isnan(v) else repr(v)),
                                    st, sv])
                    fh.write(buf.getvalue().encode("utf-8"))
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self.files.append(path)
        self._reset()
        return path, n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="exit status: 0, 1 some PVs never connected, 2 usage or names file")
    ap.add_argument("names", help="PV names file or autosave request file (.req)")
    ap.add_argument("directory", help="output directory (created if needed)")
    ap.add_argument("--format", choices=["npz", "csv", "hdf5", "parquet"], default="npz",
                    help="chunk file format (default npz); hdf5/parquet: every chunk appended to one file per day")
    ap.add_argument("--max-mb", type=float, default=0.0, metavar="MB",
                    help="hdf5/parquet: start a new file of the day when the current one passes MB (0: no limit)")
    ap.add_argument("--rotate-events", type=int, default=100_000, metavar="N",
                    help="at most N events per chunk file (default 100000)")
    ap.add_argument("--rotate-seconds", type=float, default=60.0, metavar="T",
                    help="start a new chunk file every T seconds (default 60)")
    ap.add_argument("--count", type=int, default=0, metavar="N", help="stop after N value events (0: no limit)")
    ap.add_argument("--seconds", type=float, default=0.0, metavar="T", help="stop after T seconds (0: no limit)")
    ap.add_argument("--name", default=None, help="file name prefix (default: the names file's stem)")
    ap.add_argument("--timeout", type=float, default=5.0, help="connection timeout, seconds")
    ap.add_argument("--queue-size", type=int, default=1_000_000, help="events buffered between batches")
    ap.add_argument("-m", "--macros", action="append", default=[], metavar="P=...,Q=...",
                    help="macros for the names/request file (repeatable)")
    args = ap.parse_args(argv)
    if args.rotate_events < 1 or not args.rotate_seconds > 0 or args.count < 0 or args.seconds < 0:
        ap.error("--rotate-events and --rotate-seconds must be > 0, --count and --seconds >= 0")
    name, names = job_inputs(ap, args, "monitor_to_file")
    with stop_on_signals() as stop:
        writer = ChunkWriter(args.directory, name, args.format, names, args.max_mb)
        values = 0
        ever = np.zeros(len(names), dtype=bool)
        connected = ever
        try:
            with capar.Monitor(names, form="time", connection_timeout=args.timeout,
                               queue_size=args.queue_size) as mon:
                writer._reset()  # the first chunk starts when monitoring does
                t_end = time.monotonic() + args.seconds if args.seconds else math.inf
                while not stop.is_set():
                    now = time.monotonic()
                    if now >= t_end:
                        break
                    if now - writer.started_mono >= args.rotate_seconds:
                        report(writer.flush())
                    wait = min(0.25, t_end - now, writer.started_mono + args.rotate_seconds - now)
                    batch = mon.get_batch(timeout=max(wait, 0.0))
                    if batch is None:
                        continue
                    writer.overflow += batch.overflow
                    ever[batch.index[batch.kind == 1]] = True
                    a, n = 0, len(batch)
                    if args.count:  # cut the batch after the count-th value event
                        pos = np.flatnonzero(batch.kind == 0)
                        if values + len(pos) >= args.count:
                            n = int(pos[args.count - values - 1]) + 1
                    while a < n:  # fill chunks up to rotate_events
                        b = min(n, a + args.rotate_events - len(writer))
                        writer.add(batch, a, b)
                        a = b
                        if len(writer) >= args.rotate_events:
                            report(writer.flush())
                    values += int(np.count_nonzero(batch.kind[:n] == 0))
                    if args.count and values >= args.count:
                        break
                connected = mon.connected
        finally:
            report(writer.flush())  # the pending chunk, also on errors and signals
            if writer.series is not None:
                writer.series.close()
    never = [names[i] for i in range(len(names)) if not ever[i] and not connected[i]]
    for n in never:
        print(f"{n}: not connected", file=sys.stderr)
    print(f"monitor_to_file: {values} value events in {len(writer.files)} files"
          + (" (stopped by signal)" if stop.is_set() else ""), file=sys.stderr)
    return 1 if never else 0


def report(written):
    if written is not None:
        print(f"{written[0]}: {written[1]} events", flush=True)


if __name__ == "__main__":
    sys.exit(main())
