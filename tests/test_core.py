"""The compiled core (capar/ca/_core.c) against the pure-ctypes path: same results, and a working fallback.

The differential tests build one object on each path in the same process and the same context (the path
is chosen when a Group or Monitor is made, from ``ctx.core``), against the session's real IOC.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import types
import zipfile
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import pytest

import capar
from capar.ca import core as core_mod
from capar.ca import monitor as ca_monitor
from capar.ca.context import current

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_core = pytest.mark.skipif(not core_mod.accelerated(), reason="no compiled core (or CAPAR_CORE=0)")

RECORDS = ["ao", "ai", "bo", "mbbo", "longout", "longin", "stringout", "stringin", "lsi", "int64in",
           "wf_double", "wf_char", "wf_string", "wf_text", "wf_empty", "wf_big", "lsi.VAL$"]


def _compiler() -> bool:
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None and cc not in ("/bin/false", "false")


@contextmanager
def pure_path() -> Iterator[None]:
    """Objects made inside run the pure-ctypes path (the calling thread's context forgets its core)."""
    ctx = current()
    saved, ctx.core = ctx.core, None
    try:
        yield
    finally:
        ctx.core = saved


def test_the_core_is_built_and_used_where_a_compiler_exists() -> None:
    if os.environ.get(core_mod.ENV, "").strip() == "0":
        assert not capar.ca.accelerated()
        assert "CAPAR_CORE=0" in core_mod.describe()
        return
    if not _compiler():
        pytest.skip("no C compiler here: the fallback is tested below")
    assert core_mod.library_path() is not None, "a compiler exists but the core was not built (make / pip install)"
    assert capar.ca.accelerated()
    assert current().core is not None


def test_version_and_environment_switch_say_which_path_runs() -> None:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "capar", "--version"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.startswith(f"capar {capar.__version__} (")
    assert ("compiled core" in out.stdout) == core_mod.accelerated()
    env[core_mod.ENV] = "0"
    code = "import capar, capar.ca.core as c; print(capar.ca.accelerated(), c.describe())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split(None, 1) == ["False", "pure ctypes: CAPAR_CORE=0\n"], out.stderr
    if core_mod.accelerated():  # CAPAR_CORE=1 asks for the core: present here, so it runs
        env[core_mod.ENV] = "1"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert out.stdout.startswith("True compiled core"), out.stderr


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _assert_same_snapshots(a: capar.Snapshot, b: capar.Snapshot) -> None:
    assert a.names.tolist() == b.names.tolist()
    for col in ("value", "timestamp"):  # bit for bit, NaN included
        assert getattr(a, col).tobytes() == getattr(b, col).tobytes(), col
    for col in ("status", "severity", "ok"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col
    assert a.error.tolist() == b.error.tolist()
    assert (a.stamp_ns is None) == (b.stamp_ns is None)
    if a.stamp_ns is not None:
        assert np.array_equal(a.stamp_ns, b.stamp_ns)
    assert all(_same(x, y) for x, y in zip(a.values.tolist(), b.values.tolist())), \
        [(n, x, y) for n, x, y in zip(a.names, a.values, b.values) if not _same(x, y)]
    assert a.ctrl.keys() == b.ctrl.keys()
    for k in a.ctrl:
        assert all(_same(x, y) for x, y in zip(a.ctrl[k].tolist(), b.ctrl[k].tolist())), k


@needs_core
@pytest.mark.parametrize("form", ["native", "time", "ctrl"])
@pytest.mark.parametrize("as_string", [False, True])
def test_group_reads_are_identical_on_both_paths(prefix: str, form: str, as_string: bool) -> None:
    names = ([prefix + r for r in RECORDS] + [prefix + f"s{i}" for i in range(300)]
             + [prefix + "ao", "capar:test:no_such_pv", "", "bad name\x00"])
    with capar.Group(names, form=form, as_string=as_string, connection_timeout=1.0) as fast:
        with pure_path():
            slow = capar.Group(names, form=form, as_string=as_string, connection_timeout=1.0)
        with slow:
            assert fast._chans.core is not None and slow._chans.core is None
            for _ in range(2):  # the second read reuses each path's request plan
                a, b = fast.get(timeout=5.0), slow.get(timeout=5.0)
                _assert_same_snapshots(a, b)
            assert a.ok.sum() == len(RECORDS) + 301
            assert a.error[-3] == "not connected" and a.error[-2] and a.error[-1]  # dead, bad names
            assert fast.native_types() == slow.native_types()
            assert fast.element_counts() == slow.element_counts()


@needs_core
def test_one_shot_acquire_identical_and_partial_failures_reported_alike(prefix: str) -> None:
    names = [prefix + f"s{i}" for i in range(1000)] + ["capar:test:dead1", "capar:test:dead2"]
    a = capar.acquire(names, connection_timeout=0.5)
    with pure_path():
        b = capar.acquire(names, connection_timeout=0.5)
    _assert_same_snapshots(a, b)
    assert a.ok.sum() == 1000 and a.error[-2:].tolist() == ["not connected"] * 2


def _events(mon: capar.Monitor, seconds: float) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        b = mon.get_batch(0.2)
        if b is None:
            continue
        values = b.values if b.values is not None else [None] * len(b.index)
        for i, k, v, obj, st, sv, ns in zip(b.index.tolist(), b.kind.tolist(), b.value.tolist(), values,
                                           b.status.tolist(), b.severity.tolist(), b.stamp_ns.tolist()):
            if k == 0:
                v = obj if obj is not None else v
                out.setdefault(i, []).append((ns, v.tolist() if isinstance(v, np.ndarray) else v, st, sv))
            else:
                out.setdefault(-1 - i, []).append(k)  # connection events, per PV
    return out


@needs_core
def test_monitor_events_are_identical_on_both_paths(prefix: str) -> None:
    counters = [prefix + f"c{i}" for i in range(20)]
    names = counters + [prefix + r for r in ("ao", "longin", "mbbo", "stringin", "wf_double", "wf_string")]
    names.append("capar:test:no_such_pv")
    fast = capar.Monitor(names, connection_timeout=1.0)
    with pure_path():
        slow = capar.Monitor(names, connection_timeout=1.0)
    try:
        assert fast._core.accel is not None and slow._core.accel is None
        got_fast: dict = {}
        got_slow: dict = {}
        end = time.monotonic() + 2.5
        while time.monotonic() < end:  # both consumed in turns, well within their rings
            for mon, got in ((fast, got_fast), (slow, got_slow)):
                for k, v in _events(mon, 0.1).items():
                    got.setdefault(k, []).extend(v)
    finally:
        fast.close()
        slow.close()
    assert got_fast[-1 - (len(names) - 1)] == got_slow[-1 - (len(names) - 1)] == [2]  # never connected
    for i in range(len(names) - 1):
        assert got_fast[-1 - i] == got_slow[-1 - i] == [1]  # connected once
        a, b = got_fast[i], got_slow[i]
        if i >= len(counters):  # constant records: the one initial event, the same on both paths
            assert a == b and len(a) == 1
            continue
        lo, hi = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])  # the window both saw
        wa = [e for e in a if lo <= e[0] <= hi]
        wb = [e for e in b if lo <= e[0] <= hi]
        assert wa == wb and len(wa) >= 10, (names[i], wa[:3], wb[:3])
        assert [e[1] for e in wa] == [float(x) for x in range(int(wa[0][1]), int(wa[0][1]) + len(wa))]


@needs_core
def test_decode_in_c_is_bit_for_bit_numpys() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    raw = rng.integers(0, 256, size=(n, ca_monitor.ROW), dtype=np.uint8)  # NaNs, infinities, denormals too
    vtype = np.asarray([-1, 1, 2, 3, 4, 5, 6] * 3, dtype=np.int8)
    codes = rng.integers(0, len(vtype), size=n).astype(np.int64)
    conn = rng.random(n) < 0.1
    codes[conn] = -1 - 2 * codes[conn] - rng.integers(0, 2, size=int(conn.sum()))
    accel = current().core
    for form in ("time", "native"):
        fast = ca_monitor.decode(types.SimpleNamespace(accel=accel, vtype=vtype, form=form), codes, raw)
        slow = ca_monitor.decode(types.SimpleNamespace(accel=None, vtype=vtype, form=form), codes, raw)
        assert fast.keys() == slow.keys()
        for k in fast:
            if slow[k] is None:
                assert fast[k] is None
                continue
            assert fast[k].dtype == slow[k].dtype, k
            assert fast[k].tobytes() == slow[k].tobytes(), k


def test_install_without_a_compiler_runs_the_pure_path(tmp_path: Any, prefix: str) -> None:
    """As on a machine without a C compiler: the build skips the core, capar works on the ctypes path."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "*.so", "__pycache__", ".pytest_cache", ".hypothesis", ".build"))
    env = {k: v for k, v in os.environ.items() if k != core_mod.ENV}
    env["CC"] = "/bin/false"  # every compile fails, as where none is installed
    wheels = tmp_path / "wheels"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(wheels), str(src)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = glob.glob(str(wheels / "capar-*.whl"))
    assert not [f for f in zipfile.ZipFile(whl).namelist() if "_core" in f and f.endswith((".so", ".pyd"))]
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), whl],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    # -S: no site-packages .pth (the editable install's finder); the venv's packages appended by hand
    code = f"""
import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})
import capar, capar.ca.core as c
assert not capar.ca.accelerated(), c.describe()
assert capar.__file__.startswith({str(target)!r}), capar.__file__
s = capar.acquire([{prefix + "s1"!r}, {prefix + "ao"!r}, "capar:test:dead"], connection_timeout=1.0)
with capar.Monitor([{prefix + "longin"!r}], connection_timeout=5.0) as m:
    values = []
    while not values:
        b = m.get_batch(5.0)
        values = b.value[b.kind == 0].tolist()
print(s.value[:2].tolist(), s.error[2], values[0], c.describe())
"""
    p = subprocess.run([sys.executable, "-S", "-c", code], env={**env, "PYTHONPATH": str(target)},
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split("\n")[0] == ("[1.0, 3.5] not connected -7.0 pure ctypes: no compiled core "
                                       "(no C compiler when capar was installed?)")


@needs_core
def test_single_channel_gets_identical_and_get_complete_after_a_timeout(ioc: Any, prefix: str) -> None:
    """ca.get of a scalar runs in the core (a C callback wakes the caller); the same dict as the pure path,
    and a get that timed out can still be completed, as pyepics documents."""
    import signal

    from capar import ca

    recs = ["ao", "ai", "bo", "mbbo", "longout", "longin", "stringin", "int64in", "calc_alarm", "s5"]
    for rec in recs:
        chid = ca.create_channel(prefix + rec)
        assert ca.connect_channel(chid, timeout=5.0)
        for use_time, use_ctrl in ((False, False), (True, False), (False, True)):
            ftype = ca.promote_type(chid, use_time=use_time, use_ctrl=use_ctrl)
            for as_string in (False, True):
                fast = ca.get_with_metadata(chid, ftype=ftype, as_string=as_string, timeout=5.0)
                with pure_path():
                    slow = ca.get_with_metadata(chid, ftype=ftype, as_string=as_string, timeout=5.0)
                assert fast is not None and fast.keys() == slow.keys(), (rec, ftype, fast, slow)
                assert all(_same(fast[k], slow[k]) for k in fast), (rec, ftype, fast, slow)
    chid = ca.create_channel(prefix + "s7")
    assert ca.connect_channel(chid, timeout=5.0) and ca.get(chid) == 7.0
    os.kill(ioc.pid, signal.SIGSTOP)  # alive and connected, but silent
    try:
        assert ca.get(chid, timeout=0.3) is None
    finally:
        os.kill(ioc.pid, signal.SIGCONT)
    assert ca.get_complete(chid, timeout=5.0) == 7.0
