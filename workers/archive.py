"""Job script: snapshot PVs every T seconds into rotating files DIR/NAME-YYYYmmdd-HHMMSS.npz, keeping the last N.

    python workers/archive.py names.txt /data/archive --every 60 --keep 1440 [--name NAME] [--processes K]
    python workers/archive.py ioc.req /data/archive -m P=IOC1: --every 10 --count 6
    python workers/archive.py names.txt /data/archive --every 60 --format hdf5 --keep 30 [--max-mb 2000]

With ``--format hdf5`` or ``parquet`` every snapshot is appended to ONE time series file per UTC day,
``DIR/NAME-YYYYmmdd.h5`` (``.parquet``), a new part ``NAME-YYYYmmdd-2.h5`` ... when a file passes ``--max-mb``
(:class:`capar.TimeSeriesWriter`: crash-safe appends; read a range with :func:`capar.read_series`); ``--keep``
then counts those files.

The channels stay connected between snapshots (``capar.Group``, or ``Coordinator.connect`` with
``--processes``).  File names carry the UTC time of the scheduled tick (ticks are T seconds apart, T >= 1,
so names never collide; a tick missed because a snapshot overran is skipped).  Each file is written to a
temporary ``.capar-*`` file and renamed, so a reader never sees a half-written snapshot; older files
``NAME-*.EXT`` beyond ``--keep`` are deleted after each new one.  SIGINT/SIGTERM: the snapshot in
progress is finished and saved, then the script exits 0.  Exit status 1 when some snapshot missed PVs
(listed on stderr), 2 for a bad command line or names file.
"""
import argparse
import math
import os
import re
import sys
import time

import capar
from _jobs import SERIES, DailySeries, job_inputs, stop_on_signals


def rotate(directory, name, ext, keep):
    """Delete the oldest NAME-YYYYmmdd-HHMMSS.EXT (series: NAME-YYYYmmdd[-N].EXT) files of *directory* beyond
    the newest *keep*."""
    stamp = r"-(\d{8})(?:-(\d+))?\." if ext in SERIES.values() else r"-(\d{8}-\d{6})()\."
    pattern = re.compile(re.escape(name) + stamp + re.escape(ext) + "$")
    matches = [(m.group(1), int(m.group(2) or 1), f) for f in os.listdir(directory) for m in [pattern.match(f)] if m]
    files = [f for _, _, f in sorted(matches)]
    removed = []
    for f in files[:max(len(files) - keep, 0)]:
        try:
            path = os.path.join(directory, f)
            if os.path.isdir(path + ".parts"):  # a Parquet file's appends not compacted yet
                for p in os.listdir(path + ".parts"):
                    os.unlink(os.path.join(path + ".parts", p))
                os.rmdir(path + ".parts")
            os.unlink(path)
            removed.append(f)
        except FileNotFoundError:
            pass
    return removed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="exit status: 0 every snapshot complete, 1 some PVs missed, 2 usage")
    ap.add_argument("names", help="PV names file or autosave request file (.req)")
    ap.add_argument("directory", help="output directory (created if needed)")
    ap.add_argument("--every", type=float, default=60.0, metavar="T", help="seconds between snapshots (>= 1)")
    ap.add_argument("--keep", type=int, default=100, metavar="N", help="number of files to keep (default 100)")
    ap.add_argument("--name", default=None, help="file name prefix (default: the names file's stem)")
    ap.add_argument("--format", choices=["npz", "json", "csv", "hdf5", "parquet"], default="npz",
                    help="file format (default npz; hdf5/parquet: one time series file per day)")
    ap.add_argument("--max-mb", type=float, default=0.0, metavar="MB",
                    help="hdf5/parquet: start a new file of the day when the current one passes MB (0: no limit)")
    ap.add_argument("--count", type=int, default=0, metavar="M", help="stop after M snapshots (0: run until signalled)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds: connection, and each read")
    ap.add_argument("--processes", type=int, default=0, metavar="K", help="shard over K processes (Coordinator)")
    ap.add_argument("-m", "--macros", action="append", default=[], metavar="P=...,Q=...",
                    help="macros for the names/request file (repeatable)")
    args = ap.parse_args(argv)
    if not (args.every >= 1.0 and math.isfinite(args.every)):
        ap.error("--every must be at least 1 second (file names have a resolution of one second)")
    if args.keep < 1 or args.count < 0 or args.processes < 0:
        ap.error("--keep must be >= 1, --count and --processes >= 0")
    name, names = job_inputs(ap, args, "archive")
    ext = SERIES.get(args.format, args.format)
    series = DailySeries(args.directory, name, ext, names, args.max_mb) if args.format in SERIES else None
    coord = None
    incomplete = 0
    with stop_on_signals() as stop:
        try:
            if args.processes:
                coord = capar.Coordinator(args.processes)
                source = coord.connect(names, form="time", connection_timeout=args.timeout)
            else:
                source = capar.Group(names, form="time", connection_timeout=args.timeout)
            wall0, mono0 = time.time(), time.monotonic()
            tick = done = 0
            while not stop.is_set():
                when = wall0 + tick * args.every
                snap = source.get(timeout=args.timeout)
                if series is not None:
                    snap.created = when  # the tick's time: the series' time axis
                    path = series.append(snap, when)  # one crash-safe append to the day's file
                else:
                    path = os.path.join(args.directory, f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(when))}"
                                                        f".{ext}")
                    snap.save(path)  # temporary file + rename
                removed = rotate(args.directory, name, ext, args.keep)
                done += 1
                print(f"{path}: {len(snap)} PVs, {snap.n_ok} ok, {snap.elapsed:.3f} s"
                      + (f"; removed {len(removed)} old file(s)" if removed else ""), flush=True)
                if not snap.ok.all():
                    incomplete += 1
                    failed = snap.failed
                    shown = ", ".join(f"{n} ({e})" for n, e in failed[:10])
                    print(f"{path}: {len(failed)} PVs missing: {shown}{' ...' if len(failed) > 10 else ''}",
                          file=sys.stderr, flush=True)
                if args.count and done >= args.count:
                    break
                # next tick in the future (ticks missed by an overrun are skipped)
                tick = max(tick + 1, math.ceil((time.monotonic() - mono0) / args.every))
                stop.wait(max(mono0 + tick * args.every - time.monotonic(), 0.0))
            source.close()
        finally:
            if series is not None:
                series.close()
            if coord is not None:
                coord.close()
    if stop.is_set():
        print("archive: stopped by signal", file=sys.stderr)
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
