"""Moving Snapshot columns between processes: small values pickled, large arrays in shared memory.

A worker packs a Snapshot into a plain dict (numpy columns + a list of values); every ndarray value of at
least ``threshold`` bytes is copied into ONE ``multiprocessing.shared_memory`` segment per message and
replaced by a placeholder.  The parent unlinks the segment's name at once and hands the arrays out as
views of the mapping (freed with the last array): no segment outlives a merge, the parent copies nothing.
"""
from __future__ import annotations

from multiprocessing import resource_tracker, shared_memory
from typing import Any, Optional

import numpy as np

from ..snapshot import Snapshot

__all__ = ["pack", "unpack", "DEFAULT_SHM_THRESHOLD", "ShmRef"]

#: arrays of at least this many bytes travel through shared memory (bytes)
DEFAULT_SHM_THRESHOLD = 64 * 1024
_EXACT = 2**53  # ints below this survive the trip through the float64 value column


class ShmRef:
    """Placeholder for an array stored in the message's shared-memory segment."""

    __slots__ = ("offset", "dtype", "shape")

    def __init__(self, offset: int, dtype: str, shape: tuple) -> None:
        self.offset, self.dtype, self.shape = offset, dtype, shape

    def __reduce__(self) -> Any:
        return (ShmRef, (self.offset, self.dtype, self.shape))


def pack(snap: Snapshot, threshold: Optional[int] = DEFAULT_SHM_THRESHOLD) -> dict:
    """Snapshot → picklable dict; big arrays moved to shared memory when *threshold* is not None."""
    values = snap.values.tolist()
    shm_name: Optional[str] = None
    if threshold is not None:
        big = [i for i, v in enumerate(values) if isinstance(v, np.ndarray) and v.nbytes >= threshold]
        if big:
            sizes = [values[i].nbytes for i in big]
            total = sum((s + 63) // 64 * 64 for s in sizes)
            seg = shared_memory.SharedMemory(create=True, size=max(total, 1))
            # the parent unlinks the segment after the merge: it is no longer this process's to track
            resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
            off = 0
            for i in big:
                arr = np.ascontiguousarray(values[i])
                seg.buf[off:off + arr.nbytes] = arr.view(np.uint8).reshape(-1)
                values[i] = ShmRef(off, arr.dtype.str, arr.shape)
                off += (arr.nbytes + 63) // 64 * 64
            shm_name = seg.name
            seg.close()
    # numeric scalars are rebuilt from the float64 column: only other values travel as objects
    kinds = np.full(len(values), 2, dtype=np.int8)
    objects = {}
    for i, v in enumerate(values):
        t = type(v)
        if t is float:
            kinds[i] = 0
        elif t is int and -_EXACT < v < _EXACT:
            kinds[i] = 1
        else:
            objects[i] = v
    return {
        "value": snap.value, "kinds": kinds, "objects": objects, "status": snap.status, "severity": snap.severity,
        "timestamp": snap.timestamp, "ok": snap.ok, "error": snap.error.tolist(), "ctrl": snap.ctrl,
        "elapsed": snap.elapsed, "shm": shm_name,
    }


def release(msg: dict) -> None:
    """Unlink the shared-memory segment of a message that will not be unpacked."""
    name = msg.get("shm")
    if name:
        try:
            seg = shared_memory.SharedMemory(name=name)
        except FileNotFoundError:
            return
        seg.close()
        seg.unlink()


def unpack(msg: dict) -> dict:
    """Rebuild the values column; shared-memory arrays become views of the (already unlinked) segment."""
    name = msg.get("shm")
    vals = np.empty(len(msg["kinds"]), dtype=object)
    floats = msg["kinds"] == 0
    vals[floats] = msg["value"][floats].tolist()
    ints = np.flatnonzero(msg["kinds"] == 1)
    if ints.size:
        vals[ints] = [int(x) for x in msg["value"][ints].tolist()]
    for i, v in msg["objects"].items():
        vals[i] = v
    msg["values"] = vals
    if name:
        seg = shared_memory.SharedMemory(name=name)
        # zero copy: the arrays become views of the mapping, which lives as long as they do; the
        # segment's name is unlinked at once, so nothing is left in /dev/shm whatever happens next
        mapping = seg._mmap  # type: ignore[attr-defined]
        seg._buf.release()  # type: ignore[attr-defined]
        seg._buf = seg._mmap = None  # type: ignore[attr-defined]
        seg.close()
        seg.unlink()
        for i, v in msg["objects"].items():
            if isinstance(v, ShmRef):
                dt = np.dtype(v.dtype)
                n = int(np.prod(v.shape)) if v.shape else 1
                vals[i] = np.frombuffer(mapping, dtype=dt, count=n, offset=v.offset).reshape(v.shape)
        msg["shm"] = None
    return msg
