"""capar.aio against aioca (the oracle) on the session IOC, plus capar's own awaitables.

aioca and capar share one process: aioca adopts the CA context the thread already has, so every test
loop first attaches capar's initial context (``_run``) and purges both libraries' channel caches at the
end of the loop (aioca's exit hook then has nothing left to clear).  Every comparison runs the same call
under both libraries against the same records: values and their types, augmented fields, exceptions,
subscription updates.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Awaitable, Callable

import numpy as np
import pytest

aioca = pytest.importorskip("aioca")

import capar  # noqa: E402
from capar import aio  # noqa: E402
from capar.ca import context as ca_context  # noqa: E402
from tests.conftest import N_COUNTERS, N_SCALARS  # noqa: E402

FIELDS = [f for f in aioca.ca_extra_fields if f != "datetime"] + ["ackt", "acks", "errorcode"]


def _run(fn: Callable[[], Awaitable[Any]]) -> Any:
    """asyncio.run(fn()) in a loop attached to capar's context, purging both channel caches at the end."""
    async def main() -> Any:
        ca_context.use_initial_context()
        try:
            return await fn()
        finally:
            aioca.purge_channel_caches()
            aio.purge_channel_caches()
    return asyncio.run(main())


def _same(a: Any, b: Any, where: str, fields: bool = True) -> None:
    """*b* (capar.aio) is what *a* (aioca) is: type name and base, value, every augmented field."""
    assert type(b).__name__ == type(a).__name__, where
    for base in (str, bytes, int, float, np.ndarray, Exception):
        assert isinstance(b, base) == isinstance(a, base), (where, base)
    if isinstance(a, np.ndarray):
        assert b.dtype == a.dtype, where
        np.testing.assert_array_equal(b, a, err_msg=where)
    elif isinstance(a, Exception):
        assert (repr(b), str(b), bool(b)) == (repr(a), str(a), bool(a)), where
    else:
        assert b == a, where
    if fields:
        for f in FIELDS:
            assert hasattr(b, f) == hasattr(a, f), (where, f)
            if hasattr(a, f):
                x, y = getattr(a, f), getattr(b, f)
                assert y == x or (isinstance(x, float) and x != x and y != y), (where, f, y, x)
                assert type(getattr(b, f)) is type(getattr(a, f)), (where, f)
        if hasattr(a, "timestamp"):
            assert b.datetime == a.datetime, where


# -- the public surface ------------------------------------------------------------------------------

def test_exports_match_aioca() -> None:
    missing = [n for n in aioca.__all__ if not hasattr(aio, n)]
    assert not missing
    for n in aioca.__all__:
        if n.startswith(("DBR_", "DBE_", "FORMAT_")) or n == "ca_extra_fields":
            assert getattr(aio, n) == getattr(aioca, n), n
    from aioca import types as atypes
    from capar.aio import types as ctypes_
    for n in ("Timeout", "Dbe", "Dbr", "Datatype", "Format", "Count", "AugmentedValue"):
        assert hasattr(ctypes_, n)
    assert atypes.Dbr == ctypes_.Dbr


def test_import_loads_no_library() -> None:
    import subprocess
    import sys
    code = ("import capar.aio, capar.ca.context as c, sys; "
            "assert c.registry().lib is None; assert 'epicscorelibs.ca.cadef' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_dbr_layouts_agree_with_capar_binding() -> None:
    import struct
    from capar.ca import dbr as cadbr
    from capar.aio import dbr as adbr
    for code in list(range(7)) + list(range(14, 21)) + list(range(28, 35)):
        native = code % 7
        offset = cadbr.value_offset(code)
        elem = struct.calcsize("<" + adbr._ELEMENT[native])
        assert offset + elem == cadbr.dtype_of(code).itemsize, code


# -- caget ----------------------------------------------------------------------------------------------

CASES = [  # (record, datatype, count)
    ("ao", None, 0), ("ai", None, 0), ("bo", None, 0), ("bi", None, 0), ("mbbo", None, 0), ("mbbi", None, 0),
    ("longout", None, 0), ("longin", None, 0), ("stringout", None, 0), ("stringin", None, 0),
    ("lsi", None, 0), ("int64in", None, 0), ("int64out", None, 0), ("calc_alarm", None, 0),
    ("wf_char", None, 0), ("wf_uchar", None, 0), ("wf_short", None, 0), ("wf_ushort", None, 0),
    ("wf_long", None, 0), ("wf_ulong", None, 0), ("wf_int64", None, 0), ("wf_float", None, 0),
    ("wf_double", None, 0), ("wf_string", None, 0), ("wf_text", None, 0), ("wf_empty", None, 0),
    ("wf_double", None, -1), ("wf_double", None, 3), ("wf_double", None, 100), ("wf_string", None, 2),
    ("ao", aio.DBR_STRING, 0), ("ao", aio.DBR_LONG, 0), ("ao", int, 0), ("ao", str, 0), ("ao", np.float32, 0),
    ("longout", float, 0), ("mbbo", aio.DBR_ENUM_STR, 0), ("mbbo", aio.DBR_STRING, 0), ("ao", aio.DBR_ENUM_STR, 0),
    ("stringout", bytes, 0), ("stringout", str, 0), ("wf_string", bytes, 0),
    ("wf_text", aio.DBR_CHAR_STR, 0), ("wf_text", aio.DBR_CHAR_BYTES, 0), ("wf_text", aio.DBR_CHAR_UNICODE, 0),
    ("wf_text", aio.DBR_CHAR_STR, -1), ("wf_double", aio.DBR_SHORT, 0), ("wf_short", float, 0),
    ("ao", aio.DBR_CLASS_NAME, 0), ("calc_alarm", aio.DBR_STSACK_STRING, 0), ("ao", aio.DBR_CHAR, 0),
    ("lso.VAL$", None, 0), ("lsi.VAL$", None, 0), ("lsi.VAL$", aio.DBR_CHAR_BYTES, 0),
]


def test_caget_matches_aioca(prefix: str) -> None:
    """Every record type, format, datatype and count: same value, type and augmented fields."""
    async def both() -> None:
        for rec, datatype, count in CASES:
            for fmt in (aio.FORMAT_RAW, aio.FORMAT_TIME, aio.FORMAT_CTRL):
                where = f"{rec} datatype={datatype} count={count} format={fmt}"
                a = await aioca.caget(prefix + rec, datatype=datatype, format=fmt, count=count, timeout=5)
                b = await aio.caget(prefix + rec, datatype=datatype, format=fmt, count=count, timeout=5)
                _same(a, b, where)
    _run(both)


def test_caget_lists_and_changing_values(prefix: str) -> None:
    names = [prefix + f"s{i}" for i in range(0, N_SCALARS, 7)] + [prefix + "stringin", prefix + "wf_long"]

    async def both() -> None:
        a = await aioca.caget(names, format=aio.FORMAT_TIME)
        b = await aio.caget(names, format=aio.FORMAT_TIME)
        assert isinstance(b, list) and len(b) == len(a)
        for x, y in zip(a, b):
            _same(x, y, x.name)
        b2 = await aio.caget(tuple(names[:3]), format=aio.FORMAT_CTRL)
        assert [v.name for v in b2] == names[:3] and [v.units for v in b2] == ["u"] * 3
        # a counter: values move, but type and fields agree
        a, b = await aioca.caget(prefix + "counter", format=aio.FORMAT_TIME), await aio.caget(
            prefix + "counter", format=aio.FORMAT_TIME)
        assert type(b) is aio.dbr.ca_float and b >= a and b.timestamp >= a.timestamp
        assert {f for f in FIELDS if hasattr(a, f)} == {f for f in FIELDS if hasattr(b, f)}
        assert b.raw_stamp[0] == int(b.timestamp) and 0 <= b.raw_stamp[1] < 10**9
        assert (+b) == float(b) and type(+(await aio.caget(prefix + "wf_long"))) is np.ndarray
    _run(both)


def test_caget_failures_match_aioca(prefix: str) -> None:
    """Dead PVs: CANothing with ok False, the name and ECA_TIMEOUT; raised or returned as aioca does."""
    dead = prefix + "no_such_pv"

    async def both() -> None:
        for lib in (aioca, aio):
            assert lib.CANothing is not None
        outcomes = []
        for lib in (aioca, aio):
            with pytest.raises(lib.CANothing) as e1:
                await lib.caget(dead, timeout=0.3)
            with pytest.raises(lib.CANothing) as e2:
                await lib.caget([prefix + "ao", dead], timeout=(time.time() + 0.3,))
            r3 = await lib.caget(dead, timeout=0.3, throw=False)
            r4 = await lib.caget([prefix + "ao", dead, prefix + "longin"], timeout=0.3, throw=False)
            outcomes.append((e1.value, e2.value, r3, r4))
        (a1, a2, a3, a4), (b1, b2, b3, b4) = outcomes
        for x, y, w in ((a1, b1, "single"), (a2, b2, "list"), (a3, b3, "nothrow")):
            _same(x, y, w, fields=False)
            assert (y.name, y.ok, y.errorcode) == (x.name, x.ok, x.errorcode), w
        assert b2.name == "Multiple PVs" and b1.errorcode == 80 and "timeout" in str(b1)
        assert isinstance(b1.__cause__, asyncio.TimeoutError)
        _same(a4[1], b4[1], "list nothrow", fields=False)
        _same(a4[0], b4[0], "list nothrow ok")
        _same(a4[2], b4[2], "list nothrow ok")
        assert not b4[1] and not b4[1].ok and b4[1].name == dead
    _run(both)


def test_bad_names(prefix: str) -> None:
    """Names libca refuses: CANothing(name, ECA_BADSTR) at once (aioca returns the same with throw=False;
    with throw=True it raises epicscorelibs' CAException, capar raises the CANothing)."""
    async def check() -> None:
        for name in ("", "x" * 2000, "has space", "tab\there"):
            a = await aioca.caget(name, timeout=0.3, throw=False) if not name.strip() or len(name) > 1000 else None
            b = await aio.caget(name, timeout=0.3, throw=False)
            assert isinstance(b, aio.CANothing) and not b.ok and b.errorcode == 186 and b.name == name
            if a is not None:
                assert (repr(a), str(a)) == (repr(b), str(b))
            with pytest.raises(aio.CANothing, match="Invalid string"):
                await aio.caget(name, timeout=0.3)
        r = await aio.caget([prefix + "ao", ""], throw=False)
        assert r[0] == 3.5 and r[1].errorcode == 186
        with pytest.raises(TypeError):
            await aio.caget(123)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            aio.camonitor("", print)
    _run(check)


def test_invalid_datatype_raises_even_without_throw(prefix: str) -> None:
    async def both() -> None:
        for lib in (aioca, aio):
            with pytest.raises(Exception) as e:
                await lib.caget(prefix + "ao", datatype=complex, throw=False)
            assert type(e.value).__name__ == "InvalidDatatype"
    _run(both)


# -- caput ----------------------------------------------------------------------------------------------

PUTS = [  # (record, value, datatype): written by aioca, read back; then by capar.aio, read back
    ("ao", 4.25, None), ("ao", "5.5", None), ("ao", 7, int), ("longout", 17, None), ("longout", 3.7, None),
    ("stringout", "capar", None), ("stringout", 12.5, None), ("mbbo", 1, None), ("mbbo", "Three", None),
    ("wf_double", [1.5, 2.5, 3.5], None), ("wf_double", np.arange(6.0), None), ("wf_string", ["x", "yy"], None),
    ("wf_short", [7, 8], None), ("lso.VAL$", "a long string, longer than forty characters, to the end", aio.DBR_CHAR_STR),
    ("wf_text", "text", aio.DBR_CHAR_STR), ("ao", 3.5, None), ("longout", 42, None), ("stringout", "hello", None),
    ("mbbo", 2, None),
]


def test_caput_matches_aioca(prefix: str) -> None:
    as_text = {"lso.VAL$": aio.DBR_CHAR_STR, "wf_text": aio.DBR_CHAR_STR}

    async def both() -> None:
        records = sorted({r for r, _, _ in PUTS} | {"s1", "s2"})
        before = {r: await aioca.caget(prefix + r, datatype=as_text.get(r)) for r in records}
        try:
            await puts()
        finally:  # the session IOC's values as they were: later tests read them
            for r, v in before.items():
                await aioca.caput(prefix + r, v, datatype=as_text.get(r), wait=True)

    async def puts() -> None:
        for rec, value, datatype in PUTS:
            got = []
            for lib in (aioca, aio):
                r = await lib.caput(prefix + rec, value, datatype=datatype, wait=True, timeout=5)
                assert isinstance(r, lib.CANothing) and r.ok and r.name == prefix + rec
                got.append((r, await aioca.caget(prefix + rec, format=aio.FORMAT_TIME)))
            (ra, va), (rb, vb) = got
            _same(ra, rb, f"put {rec} {value!r}", fields=False)
            if isinstance(va, np.ndarray):
                np.testing.assert_array_equal(va, vb)
            else:
                assert va == vb, (rec, value)
        # lists: one value per PV, repeat_value, no wait
        names = [prefix + "s1", prefix + "s2"]
        rs = await aio.caput(names, [10.0, 20.0], wait=True)
        assert [r.ok for r in rs] == [True, True] and list(await aio.caget(names)) == [10.0, 20.0]
        await aio.caput(names, 7.0, repeat_value=True, wait=True)
        assert list(await aio.caget(names)) == [7.0, 7.0]
        await aio.caput(names, [1.0, 2.0])  # wait=False: sent, not awaited
        await aio.caput(names[0], 1.0, wait=True)
        assert list(await aio.caget(names)) == [1.0, 2.0]
        for lib in (aioca, aio):
            with pytest.raises(AssertionError):
                await lib.caput(names, [1.0, 2.0, 3.0])
        # a dead PV
        r = await aio.caput(prefix + "no_such_pv", 1.0, timeout=0.2, throw=False)
        a = await aioca.caput(prefix + "no_such_pv", 1.0, timeout=0.2, throw=False)
        _same(a, r, "dead put", fields=False)
        with pytest.raises(aio.CANothing):
            await aio.caput([prefix + "ao", prefix + "no_such_pv"], 3.5, timeout=0.2)
        # a text too long for DBR_STRING: libca refuses it (ECA_BADSTR) in both
        text = "a long string, longer than forty characters, to the end"
        a = await aioca.caput(prefix + "lso.VAL$", text, wait=True, throw=False)
        b = await aio.caput(prefix + "lso.VAL$", text, wait=True, throw=False)
        _same(a, b, "put too long", fields=False)
        assert b.errorcode == 186 and not b.ok
        with pytest.raises(aio.CANothing, match="Invalid string"):
            await aio.caput(prefix + "lso.VAL$", text)
    _run(both)


# -- connect, cainfo, channel infos ------------------------------------------------------------------------

def test_connect_cainfo_match_aioca(prefix: str) -> None:
    async def both() -> None:
        names = [prefix + "ao", prefix + "wf_string", prefix + "mbbi"]
        for lib in (aioca, aio):
            r = await lib.connect(names)
            assert [x.ok for x in r] == [True] * 3
        ia, ib = await aioca.cainfo(names), await aio.cainfo(names)
        for a, b in zip(ia, ib):
            assert type(b).__name__ == "CAInfo"
            assert vars(a) == vars(b) and str(a) == str(b)
        dead = prefix + "no_such_pv"
        _same(await aioca.connect(dead, timeout=0.2, throw=False), await aio.connect(dead, timeout=0.2, throw=False),
              "connect dead", fields=False)
        r = await aio.connect(dead, wait=False)
        assert r.ok
        info = await aio.cainfo(dead, wait=False)
        ainfo = await aioca.cainfo(dead, wait=False)
        assert (info.state, info.count, info.datatype) == (ainfo.state, ainfo.count, ainfo.datatype) == (0, 0, 7)
        infos = {i.name: i for i in aio.get_channel_infos()}
        assert infos[prefix + "ao"].connected and not infos[dead].connected
        assert infos[prefix + "ao"].subscriber_count == 0
        aio.purge_channel_caches()
        assert aio.get_channel_infos() == []
        assert (await aio.caget(prefix + "ao")) == 3.5  # channels come back after a purge
    _run(both)


# -- camonitor ----------------------------------------------------------------------------------------------

def test_camonitor_matches_aioca(prefix: str) -> None:
    """The same counter under both libraries: the same updates (value, timestamp, fields), in order."""
    async def both() -> None:
        pv = prefix + "counter"
        got: dict[str, list] = {"a": [], "b": []}
        sa = aioca.camonitor(pv, got["a"].append, format=aio.FORMAT_TIME, all_updates=True)
        sb = aio.camonitor(pv, got["b"].append, format=aio.FORMAT_TIME, all_updates=True)
        while len(got["a"]) < 6 or len(got["b"]) < 6:
            await asyncio.sleep(0.05)
        sa.close()
        sb.close()
        assert sb.state == sb.CLOSED and sb.dropped_callbacks == 0
        a = {float(v): v for v in got["a"]}
        b = {float(v): v for v in got["b"]}
        common = sorted(set(a) & set(b))
        assert len(common) >= 4
        for k in common:
            _same(a[k], b[k], f"update {k}")
        values = [float(v) for v in got["b"]]
        assert values == sorted(values) and values[-1] - values[0] == len(values) - 1  # none lost
    _run(both)


def test_camonitor_callbacks_async_and_lists(prefix: str) -> None:
    async def check() -> None:
        pvs = [prefix + f"c{i}" for i in range(3)]
        seen: list = []

        async def slow(value: Any, index: int) -> None:
            seen.append((index, value))
            await asyncio.sleep(0.35)  # the 3 updates meanwhile are merged (all_updates=False)

        subs = aio.camonitor(pvs, slow)
        while len({i for i, _ in seen}) < 3 or len(seen) < 6:
            await asyncio.sleep(0.05)
        for s in subs:
            s.close()
        assert {v.name for _, v in seen} == set(pvs)
        assert all(v.name == pvs[i] for i, v in seen)
        assert sum(s.dropped_callbacks for s in subs) > 0
        # ctrl format: property fields; a sync callback
        got: list = []
        s = aio.camonitor(prefix + "ao", got.append, format=aio.FORMAT_CTRL)
        while not got:
            await asyncio.sleep(0.02)
        s.close()
        assert got[0] == 3.5 and got[0].units == "mm" and got[0].precision == 3
        # a callback that raises: the subscription closes and reports on stderr
        def bad(v: Any) -> None:
            raise RuntimeError("boom")
        s = aio.camonitor(prefix + "ao", bad)
        while s.state != s.CLOSED:
            await asyncio.sleep(0.02)
    _run(check)


def test_camonitor_dead_pv_connect_timeout(prefix: str) -> None:
    """connect_timeout: the callback gets CANothing(name, ECA_TIMEOUT) even without notify_disconnect."""
    async def both() -> None:
        dead = prefix + "no_such_pv"
        got: dict[str, list] = {"a": [], "b": []}
        sa = aioca.camonitor(dead, got["a"].append, connect_timeout=0.2)
        sb = aio.camonitor(dead, got["b"].append, connect_timeout=(time.time() + 0.2,))
        while not got["a"] or not got["b"]:
            await asyncio.sleep(0.05)
        sa.close()
        sb.close()
        _same(got["a"][0], got["b"][0], "connect timeout", fields=False)
        assert got["b"][0].errorcode == 80 and not got["b"][0].ok
    _run(both)


def test_subscription_async_iteration(prefix: str) -> None:
    async def check() -> None:
        values = []
        async with aio.camonitor(prefix + "counter", format=aio.FORMAT_TIME, all_updates=True) as sub:
            async for v in sub:
                values.append(v)
                if len(values) == 4:
                    break
        assert sub.state == sub.CLOSED
        assert [float(v) for v in values] == [float(values[0]) + k for k in range(4)]
        assert all(hasattr(v, "timestamp") for v in values)
        sub = aio.camonitor(prefix + "ao")
        first = await sub.__anext__()
        assert first == 3.5
        asyncio.get_running_loop().call_later(0.1, sub.close)
        rest = [v async for v in sub]  # ends when closed
        assert rest == []
        with pytest.raises(TypeError):
            aiter = aio.camonitor(prefix + "ao", print)
            try:
                aiter.__aiter__()
            finally:
                aiter.close()
    _run(check)


def test_purge_closes_subscriptions(prefix: str) -> None:
    async def check() -> None:
        got: list = []
        sub = aio.camonitor(prefix + "counter", got.append)
        while not got:
            await asyncio.sleep(0.02)
        assert {i.name: i.subscriber_count for i in aio.get_channel_infos()}[prefix + "counter"] == 1
        aio.purge_channel_caches()
        assert sub.state == sub.CLOSED
        n = len(got)
        await asyncio.sleep(0.3)
        assert len(got) == n
    _run(check)


def test_run_is_deprecated_like_aioca(prefix: str) -> None:
    async def one() -> float:
        ca_context.use_initial_context()
        try:
            return await aio.caget(prefix + "ao")
        finally:
            aio.purge_channel_caches()
    with pytest.warns(DeprecationWarning):
        assert aio.run(one()) == 3.5


# -- loops, threads, the loop never blocked -----------------------------------------------------------------

def test_several_loops_in_several_threads(prefix: str) -> None:
    names = [prefix + f"s{i}" for i in range(N_SCALARS)]
    results: dict[int, Any] = {}

    def worker(k: int) -> None:
        async def main() -> Any:
            values = await aio.caget(names[k::3], format=aio.FORMAT_TIME)
            got: list = []
            sub = aio.camonitor(prefix + f"c{k}", got.append)
            while len(got) < 3:
                await asyncio.sleep(0.02)
            sub.close()
            await aio.caput(prefix + f"s{k}", float(k), wait=True)
            return values, got
        try:
            results[k] = asyncio.run(main())
        except BaseException as exc:  # reported by the assertion below
            results[k] = exc

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    _run(lambda: asyncio.sleep(0))  # purges what the three loops left
    for k in range(3):
        assert not isinstance(results[k], BaseException), results[k]
        values, got = results[k]
        assert [float(v) for v in values] == [float(i) for i in range(k, N_SCALARS, 3)]
        assert all(v.name == names[i] for v, i in zip(values, range(k, N_SCALARS, 3)))
        assert [float(v) for v in got] == [float(got[0]) + j for j in range(len(got))]


def test_loop_never_blocked_by_bulk_and_lists(prefix: str) -> None:
    """A heartbeat task keeps running while a 10,000-PV acquire, a Group read and a 2,000-PV caget are
    in flight (the work runs in a thread or in libca's threads, never in the loop)."""
    names = [prefix + f"s{i}" for i in range(N_SCALARS)] * 5  # 10,000 positions

    async def check() -> None:
        async def with_heartbeat(aw: Awaitable[Any]) -> tuple[Any, int]:
            ticks = 0
            task = asyncio.ensure_future(aw)
            while not task.done():
                ticks += 1
                await asyncio.sleep(0.001)
            return task.result(), ticks

        snap, ticks = await with_heartbeat(aio.acquire(names, form="time", timeout=5.0))
        assert ticks >= 3 and len(snap) == 10_000 and snap.ok.all()
        np.testing.assert_array_equal(snap.value[:N_SCALARS], np.arange(N_SCALARS, dtype=float))
        values, ticks = await with_heartbeat(aio.caget(names[:N_SCALARS]))
        assert ticks >= 2 and [float(v) for v in values] == list(map(float, range(N_SCALARS)))
        async with aio.Group(names[:N_SCALARS], form="ctrl") as g:
            snap, ticks = await with_heartbeat(g.get(timeout=5.0))
            assert ticks >= 2 and snap.ok.all()
    _run(check)


# -- capar's awaitables ------------------------------------------------------------------------------------

def test_acquire_and_group(prefix: str) -> None:
    async def check() -> None:
        dead = prefix + "no_such_pv"
        snap = await aio.acquire([prefix + "ao", dead, prefix + "stringin"], timeout=1.0, connection_timeout=0.5)
        assert list(snap.ok) == [True, False, True] and snap.error[1]
        assert snap.value[0] == 3.5 and snap.values[2] == "world"
        ref = capar.acquire([prefix + "ao", prefix + "longin"], form="ctrl")
        g = aio.Group([prefix + "ao", prefix + "longin"], form="ctrl")
        assert g.group is None  # no I/O before it is awaited
        await g
        s = await g.get(timeout=2.0)
        assert list(s.value) == list(ref.value) and s.ctrl["units"][0] == "mm"
        res = await g.put([2.5, 5], wait=True, timeout=5.0)
        assert res.ok.all()
        assert list((await g.get()).value) == [2.5, 5.0]
        res = await g.put([3.5, -7], wait=True)
        await g.close()
        assert g.group.closed
        with pytest.raises(RuntimeError):
            await g.get()
    _run(check)


def test_monitor_batches(prefix: str) -> None:
    async def check() -> None:
        names = [prefix + f"c{i}" for i in range(N_COUNTERS)]
        seen = np.zeros(N_COUNTERS, dtype=int)
        async with aio.Monitor(names, max_batches=2) as mon:
            async for batch in mon:
                seen += np.bincount(batch.index[batch.kind == 0], minlength=N_COUNTERS)
                if (seen >= 3).all():
                    break
            thread = mon._thread
        assert thread is not None and not thread.is_alive()
        assert mon.monitor.closed and mon.overflow == 0
        assert [b async for b in mon] == []  # closed: iteration ended
        mon2 = aio.Monitor([prefix + "ao"])
        values: list = []
        async for batch in mon2:  # a connection event (kind 1), then the value
            values += batch.value[batch.kind == 0].tolist()
            if values:
                break
        assert values[0] == 3.5
        await mon2.close()
    _run(check)


def test_values_outlive_their_loop(prefix: str) -> None:
    """Results are plain Python/numpy objects: usable after the loop ended; nothing left running."""
    before = {t.name for t in threading.enumerate()}
    v = _run(lambda: aio.caget(prefix + "wf_double", format=aio.FORMAT_TIME))
    assert isinstance(v, np.ndarray) and v.name == prefix + "wf_double" and v.datetime.year >= 2020
    assert {t.name for t in threading.enumerate() if t.name.startswith("capar-aio")} - before == set()
