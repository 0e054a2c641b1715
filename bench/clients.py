"""One benchmark cell, run inside a fresh subprocess by ``bench/run.py``.

    python bench/clients.py CLIENT WORKLOAD NAMESFILE [ARG]

WORKLOAD is ``oneshot`` (ARG unused), ``repeat`` (ARG = rounds, default 10) or ``waveform``
(ARG = element count to read).  NAMESFILE holds one PV name per line.

Prints exactly ONE JSON line on stdout:

    {"seconds": S, "ok": N, "n": len(names), ...}   the work was done
    {"skip": "why"}                                 client not installed / workload not offered
    {"error": "Type: message"}                      the client failed (exit status 1)

What is timed (``time.perf_counter`` around the work only; imports, library loading and CA context
creation happen before the timer starts):

* ``oneshot``  -- channel creation + connection + one read of every name.
* ``repeat``   -- channels already connected (explicit channel objects are created and connected
  before the timer; for function-style APIs one untimed warm-up call is made first, so whatever
  channel cache the library keeps is warm), then ROUNDS reads of every name.
* ``waveform`` -- as ``repeat`` with one round, reading ARG elements of each waveform.

Only the CA environment given by the parent (``EPICS_CA_*``) decides where traffic goes.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

# Generous CA timeouts so that "ok" counts what the client can do, not an arbitrary default.
# (capar's calls use the timeouts the benchmark brief fixes: acquire 10 s, Group.get 5 s.)
CONN_TIMEOUT = float(os.environ.get("BENCH_CONN_TIMEOUT", "60"))
GET_TIMEOUT = float(os.environ.get("BENCH_GET_TIMEOUT", "60"))


class Skip(Exception):
    """The client cannot run here (not installed, workload not offered)."""


# --------------------------------------------------------------------------------------------------
# counting what arrived
# --------------------------------------------------------------------------------------------------
def _value_ok(v: Any) -> bool:
    if v is None or isinstance(v, BaseException):
        return False
    flag = getattr(v, "ok", None)  # cothread / aioca augmented values
    if isinstance(flag, (bool, int)) and not flag:
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    return True


def _length(v: Any) -> int:
    try:
        return len(v)
    except TypeError:
        return 1


def _as_values(result: Any, n: int) -> Optional[List[Any]]:
    """Best effort: turn whatever a client returned into a list of n per-PV values."""
    if isinstance(result, dict):
        return list(result.values())
    vals = getattr(result, "values", None)
    if vals is not None and not callable(vals):
        return _as_values(vals, n)
    try:
        import numpy as np

        if isinstance(result, np.ndarray) and result.dtype != object:
            if result.ndim == 1 and result.shape[0] == n:
                if result.dtype.kind == "f":
                    return [None if math.isnan(x) else x for x in result.tolist()]
                return result.tolist()
            if result.ndim == 2 and result.shape[0] == n:
                return [row for row in result]
    except ImportError:  # pragma: no cover
        pass
    try:
        return list(result)
    except TypeError:
        return None


def _mask_count(result: Any, n: int) -> Optional[int]:
    """A result object carrying a per-PV boolean mask (``ok``/``mask``/``valid``/``connected``)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return None
    for attr in ("ok", "mask", "valid", "connected"):
        m = getattr(result, attr, None)
        if m is None or callable(m):
            continue
        try:
            arr = np.asarray(m)
        except Exception:
            continue
        if arr.dtype == bool and arr.shape[:1] == (n,):
            return int(arr.sum())
    return None


def summarize(result: Any, n: int) -> Dict[str, Any]:
    """ok count (and received element count) of one bulk read."""
    out: Dict[str, Any] = {"result_type": type(result).__name__}
    masked = _mask_count(result, n)
    values = _as_values(result, n)
    if values is not None:
        good = [v for v in values if _value_ok(v)]
        out["ok"] = len(good)
        out["elements"] = sum(_length(v) for v in good)
        if len(values) != n:
            out["returned"] = len(values)
    if masked is not None:
        out["ok"] = masked
    if "ok" not in out:
        out["ok"] = None
    return out


def worst(summaries: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Over several rounds report the worst round (fewest ok)."""
    return min(summaries, key=lambda s: (s.get("ok") is None, s.get("ok") or 0))


# --------------------------------------------------------------------------------------------------
# helpers shared by the function-style clients
# --------------------------------------------------------------------------------------------------
def timed_calls(call: Callable[[], Any], n: int, rounds: int, warm: bool) -> Dict[str, Any]:
    if warm:
        call()  # untimed warm-up: connect / fill whatever cache the library keeps
    sums = []
    elapsed = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        res = call()
        elapsed += time.perf_counter() - t0
        sums.append(summarize(res, n))  # counting is outside the timer
        del res
    out = worst(sums)
    out["seconds"] = elapsed
    return out


def _rounds(workload: str, arg: Optional[int]) -> int:
    if workload == "repeat":
        return arg or 10
    return 1


# --------------------------------------------------------------------------------------------------
# pyepics
# --------------------------------------------------------------------------------------------------
def _pyepics():
    # Import epicscorelibs first: pyepics then loads the same libca as every other client here
    # instead of the copy bundled in the pyepics wheel (see ca.find_lib, "Test 2").
    try:
        import epicscorelibs.path  # noqa: F401
        import epics
    except ImportError as e:
        raise Skip(f"pyepics not installed ({e})")

    epics.ca.initialize_libca()
    return epics


def pyepics_many(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    epics = _pyepics()
    count = arg if workload == "waveform" else None
    kw = dict(timeout=GET_TIMEOUT, connection_timeout=CONN_TIMEOUT, count=count)
    out = timed_calls(lambda: epics.caget_many(names, **kw), len(names),
                      _rounds(workload, arg), warm=workload != "oneshot")
    out["libca"] = epics.ca.find_libca()
    return out


def pyepics_pv(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    epics = _pyepics()
    out = _pv_loop(epics, names, workload, arg)
    out["libca"] = epics.ca.find_libca()
    return out


def capar_pv(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    """The seed's "Method 1" with capar's pyepics-compatible PV objects."""
    capar, path = _capar()
    out = _pv_loop(capar, names, workload, arg)
    out["libca"] = path
    return out


def _pv_loop(epics: Any, names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    """PV objects (auto_monitor off) created for every name, then get() on each."""
    n = len(names)
    count = arg if workload == "waveform" else None
    if workload == "oneshot":
        t0 = time.perf_counter()
        pvs = [epics.PV(name, auto_monitor=False, connection_timeout=CONN_TIMEOUT) for name in names]
        vals = [p.get(timeout=GET_TIMEOUT) for p in pvs]
        elapsed = time.perf_counter() - t0
        out = summarize(vals, n)
    else:
        pvs = [epics.PV(name, auto_monitor=False, connection_timeout=CONN_TIMEOUT) for name in names]
        for p in pvs:
            p.wait_for_connection(timeout=CONN_TIMEOUT)
        sums = []
        elapsed = 0.0
        for _ in range(_rounds(workload, arg)):
            t0 = time.perf_counter()
            vals = [p.get(count=count, timeout=GET_TIMEOUT) for p in pvs]
            elapsed += time.perf_counter() - t0
            sums.append(summarize(vals, n))
            del vals
        out = worst(sums)
    out["seconds"] = elapsed
    return out


# --------------------------------------------------------------------------------------------------
# cothread
# --------------------------------------------------------------------------------------------------
def cothread_(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    try:
        import cothread  # noqa: F401
        from cothread import catools, load_ca
    except ImportError as e:
        raise Skip(f"cothread not installed ({e})")
    count = arg if workload == "waveform" else 0
    kw = dict(timeout=GET_TIMEOUT, throw=False, count=count)
    out = timed_calls(lambda: catools.caget(names, **kw), len(names),
                      _rounds(workload, arg), warm=workload != "oneshot")
    out["libca"] = getattr(load_ca, "libca_path", None)
    return out


# --------------------------------------------------------------------------------------------------
# aioca
# --------------------------------------------------------------------------------------------------
def aioca_(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    try:
        import asyncio

        import aioca
    except ImportError as e:
        raise Skip(f"aioca not installed ({e})")
    n = len(names)
    count = arg if workload == "waveform" else 0
    kw = dict(timeout=GET_TIMEOUT, throw=False, count=count)

    if workload == "oneshot":
        t0 = time.perf_counter()
        res = asyncio.run(aioca.caget(names, **kw))
        elapsed = time.perf_counter() - t0
        out = summarize(res, n)
        out["seconds"] = elapsed
    else:
        # ONE event loop for warm-up and the timed rounds: aioca's channels live on it.
        async def work():
            await aioca.caget(names, **kw)
            sums, elapsed = [], 0.0
            for _ in range(_rounds(workload, arg)):
                t0 = time.perf_counter()
                res = await aioca.caget(names, **kw)
                elapsed += time.perf_counter() - t0
                sums.append(summarize(res, n))
                del res
            o = worst(sums)
            o["seconds"] = elapsed
            return o

        out = asyncio.run(work())
    try:
        import epicscorelibs.path

        out["libca"] = epicscorelibs.path.get_lib("ca")
    except Exception:
        pass
    return out


# --------------------------------------------------------------------------------------------------
# capar (API under construction: any failure is reported, never fatal to the table)
# --------------------------------------------------------------------------------------------------
def _capar():
    import capar

    # Like pyepics' initialize_libca() above: load libca and create the CA context before the timer
    # (capar.ca mirrors epics.ca; without this the first timed call would do it).
    init = getattr(getattr(capar, "ca", None), "initialize_libca", None)
    if callable(init):
        init()
    # ... and import what the timed calls use, as `import epics` does for pyepics (numpy included):
    # capar's imports are lazy, so the first PV or Group would otherwise import them inside the timer
    import capar.bulk  # noqa: F401
    import capar.pv  # noqa: F401
    try:
        from capar.ca import libca

        out_path = libca.libca_path()
    except Exception:
        out_path = None
    return capar, out_path


def capar_acquire(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    if workload == "repeat":
        raise Skip("one-shot API (repeated reads: see capar_group)")
    capar, path = _capar()
    if not hasattr(capar, "acquire"):
        raise AttributeError("capar has no attribute 'acquire' (not written yet)")
    out = timed_calls(lambda: capar.acquire(names, form="native", timeout=10.0), len(names),
                      1, warm=workload == "waveform")
    out["libca"] = path
    return out


def _group_connect(g: Any) -> str:
    """Connect a capar.Group before the timer, with whatever method it offers."""
    for meth in ("connect", "wait_for_connection", "wait_connected"):
        fn = getattr(g, meth, None)
        if callable(fn):
            try:
                fn(timeout=CONN_TIMEOUT)
            except TypeError:
                fn()
            return meth
    if getattr(g, "connected", None) is not None and not callable(g.connected):
        return "in Group()"  # the constructor waits for the connections itself
    g.get(timeout=CONN_TIMEOUT)  # no explicit connect: an untimed first read connects
    return "warm get"


def _group_close(g: Any) -> None:
    for meth in ("close", "clear", "disconnect"):
        fn = getattr(g, meth, None)
        if callable(fn):
            try:
                fn()
            except Exception:
                pass
            return


def capar_group(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    capar, path = _capar()
    if not hasattr(capar, "Group"):
        raise AttributeError("capar has no attribute 'Group' (not written yet)")
    n = len(names)
    if workload == "oneshot":
        t0 = time.perf_counter()
        g = capar.Group(names)
        how = _group_connect(g)
        res = g.get(timeout=5.0)
        elapsed = time.perf_counter() - t0
        out = summarize(res, n)
        out["seconds"] = elapsed
    else:
        g = capar.Group(names)
        how = _group_connect(g)
        out = timed_calls(lambda: g.get(timeout=5.0), n, _rounds(workload, arg), warm=False)
    out["connect"] = how
    out["libca"] = path
    _group_close(g)
    return out


def capar_many(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    capar, path = _capar()
    if not hasattr(capar, "caget_many"):
        raise AttributeError("capar has no attribute 'caget_many' (not written yet)")
    out = timed_calls(lambda: capar.caget_many(names), len(names), _rounds(workload, arg),
                      warm=workload != "oneshot")
    out["libca"] = path
    return out


def capar_pure(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    """capar_group on the pure-ctypes path (no compiled core), side by side with the accelerated one."""
    os.environ["CAPAR_CORE"] = "0"
    return capar_group(names, workload, arg)


# --------------------------------------------------------------------------------------------------
# epics-rs (the Rust CA client of ophyd-epicsrs: its bulk read, ``get_ca_context().bulk_get``)
# --------------------------------------------------------------------------------------------------
def epicsrs(names: List[str], workload: str, arg: Optional[int]) -> Dict[str, Any]:
    try:
        from ophyd_epicsrs._contexts import get_ca_context
    except ImportError as e:
        raise Skip(f"ophyd-epicsrs not installed ({e})")
    if workload == "waveform":
        raise Skip("bulk_get of 100 x 100,000 doubles: not offered with a count")
    ctx = get_ca_context()  # the context (its runtime and sockets) outside the timer, as for the others
    out = timed_calls(lambda: ctx.bulk_get(names, timeout=GET_TIMEOUT), len(names), _rounds(workload, arg),
                      warm=workload != "oneshot")
    try:
        from importlib.metadata import version

        out["libca"] = f"ophyd-epicsrs {version('ophyd-epicsrs')} (Rust, no libca)"
    except Exception:
        pass
    return out


CLIENTS: Dict[str, Callable[[List[str], str, Optional[int]], Dict[str, Any]]] = {
    "pyepics_many": pyepics_many,
    "pyepics_pv": pyepics_pv,
    "cothread": cothread_,
    "aioca": aioca_,
    "capar_acquire": capar_acquire,
    "capar_group": capar_group,
    "capar_pure": capar_pure,
    "epicsrs": epicsrs,
    "capar_many": capar_many,
    "capar_pv": capar_pv,
}
WORKLOADS = ("oneshot", "repeat", "waveform")


def _emit(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main(argv: List[str]) -> int:
    if len(argv) < 3 or argv[0] not in CLIENTS or argv[1] not in WORKLOADS:
        sys.stderr.write(f"usage: clients.py {{{','.join(CLIENTS)}}} {{{','.join(WORKLOADS)}}} "
                         "NAMESFILE [ARG]\n")
        return 2
    client, workload, namesfile = argv[:3]
    arg = int(argv[3]) if len(argv) > 3 else None
    with open(namesfile) as f:
        names = [line.strip() for line in f if line.strip()]
    try:
        out = CLIENTS[client](names, workload, arg)
    except Skip as e:
        _emit({"skip": str(e)})
        return 0
    except BaseException as e:  # noqa: BLE001 -- report anything, the table goes on
        msg = str(e).strip().splitlines()
        _emit({"error": f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]})
        return 1
    out["n"] = len(names)
    _emit(out)
    return 0


if __name__ == "__main__":
    rc = main(sys.argv[1:])
    sys.stdout.flush()
    # Skip interpreter teardown: some clients' atexit handlers (CA context destruction with 100k
    # channels) can take long and are not part of what is measured.
    os._exit(rc)
