"""The binding layer: lazy loading, DBR layouts, ECA errors (no IOC needed, but libca is real)."""
from __future__ import annotations

import ctypes
import math
import subprocess
import sys

import numpy as np
import pytest

from capar.ca import dbr, errors
from capar.ca.channel import default_get_timeout


def test_import_capar_loads_no_shared_library():
    code = ("import capar, capar.pv, capar.bulk, capar.snapshot, capar.ca;"
            "maps = open('/proc/self/maps').read();"
            "print('libca' in maps or 'libCom' in maps)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_dbr_layouts_match_libca_tables():
    from capar.ca.libca import libca_path

    lib = ctypes.CDLL(libca_path())
    size = (ctypes.c_ushort * 39).in_dll(lib, "dbr_size")
    vsize = (ctypes.c_ushort * 39).in_dll(lib, "dbr_value_size")
    for t in range(35):
        assert dbr.dtype_of(t).itemsize == size[t], t
        assert dbr.value_dtype(t).itemsize == vsize[t], t
        assert dbr.dbr_size_n(t, 3) == size[t] + 2 * vsize[t]


def test_promote_and_native_types():
    assert dbr.promote_type(dbr.DOUBLE, use_time=True) == dbr.TIME_DOUBLE
    assert dbr.promote_type(dbr.ENUM, use_ctrl=True) == dbr.CTRL_ENUM
    assert dbr.promote_type(dbr.TIME_LONG, use_ctrl=True, use_time=True) == dbr.CTRL_LONG
    assert [dbr.native_type(t) for t in (0, 6, 14, 20, 28, 34)] == [0, 6, 0, 6, 0, 6]
    with pytest.raises(ValueError):
        dbr.native_type(35)


def test_epics_epoch_conversion():
    assert dbr.to_posix(0, 0) == 631152000.0
    assert dbr.to_posix(10, 500_000_000) == pytest.approx(631152010.5)


def test_decode_time_double_array():
    dt = dbr.dtype_of(dbr.TIME_DOUBLE)
    raw = np.zeros(dbr.dbr_size_n(dbr.TIME_DOUBLE, 3), dtype=np.uint8)
    head = np.zeros(1, dtype=dt)
    head["status"], head["severity"], head["secs"], head["nsec"] = 3, 2, 100, 5
    raw[: dt.itemsize] = head.view(np.uint8)
    raw[dbr.value_offset(dbr.TIME_DOUBLE):] = np.array([1.5, 2.5, 3.5]).view(np.uint8)
    values, header = dbr.decode(dbr.TIME_DOUBLE, 3, raw)
    assert values.tolist() == [1.5, 2.5, 3.5]
    md = dbr.unpack_metadata(dbr.TIME_DOUBLE, header)
    assert md["status"] == 3 and md["severity"] == 2
    assert md["timestamp"] == pytest.approx(631152100.000000005)
    assert md["posixseconds"] == 631152100 and md["nanoseconds"] == 5


def test_eca_errors_are_builtin_compatible():
    with pytest.raises(TimeoutError):
        errors.raise_for_status(errors.ECA.TIMEOUT, "x")
    with pytest.raises(errors.CAError) as info:
        errors.raise_for_status(errors.ECA.DISCONN, "ca.get", "PV:X")
    assert isinstance(info.value, errors.ChannelNotConnected) and "PV:X" in str(info.value)
    errors.raise_for_status(errors.ECA.NORMAL, "ok")  # no exception
    assert issubclass(errors.BadPVName, ValueError)


def test_default_get_timeout_is_documented_formula():
    assert default_get_timeout(1) == 0.5
    assert default_get_timeout(1000) == pytest.approx(0.5 + math.log10(1000))
    assert default_get_timeout(0) == 0.5


def test_import_capar_imports_no_numpy_and_finding_libca_no_setuptools():
    """`import capar` is lazy (PEP 562); locating libca reads epicscorelibs' dsoinfo, not setuptools."""
    code = ("import sys, capar, capar.ca;"
            "lazy = not any(m in sys.modules for m in ('numpy', 'capar.pv', 'capar.ca.channel', "
            "'multiprocessing'));"
            "from capar.ca.libca import libca_path, _libcom_path;"
            "paths = [libca_path(), _libcom_path()];"
            "print(lazy, 'setuptools' in sys.modules or 'setuptools_dso' in sys.modules, "
            "all(__import__('os').path.exists(p) for p in paths))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True"]


def test_lazy_capar_ca_names_match_their_modules():
    import capar
    import capar.ca as ca
    from capar.ca import channel, context

    assert set(channel.__all__) <= set(ca.__all__)
    for name in ca.__all__:  # initial_context is None until the first CA call (pyepics' module variable)
        assert name == "initial_context" or getattr(ca, name) is not None, name
    for name in ("get", "put", "create_channel", "pend_event", "clear_cache"):
        assert getattr(ca, name) is getattr(channel, name)
    assert ca.CAThread is context.CAThread
    for name in capar.__all__:
        assert getattr(capar, name) is not None, name
    assert capar.dbr is dbr and capar.ca is ca
    assert capar.pv.get_pv is capar.get_pv  # pyepics scripts use epics.pv.get_pv after `import epics`
    assert capar.parallel.CAPool is capar.CAPool
    with pytest.raises(AttributeError):
        capar.no_such_name  # noqa: B018
    with pytest.raises(AttributeError):
        ca.no_such_name  # noqa: B018


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver default on Linux only")
@pytest.mark.parametrize("code, expected", [
    ("import capar, multiprocessing as mp; mp.Lock()", "forkserver"),       # capar first: patched on import
    ("import multiprocessing as mp, capar; mp.Lock()", "forkserver"),       # multiprocessing first
    ("import capar, multiprocessing as mp; mp.set_start_method('spawn')", "spawn"),  # the program's choice
    ("import multiprocessing as mp; mp.Lock(); import capar", "fork"),      # default already resolved
])
def test_forkserver_becomes_only_the_default_start_method(code, expected):
    out = subprocess.run([sys.executable, "-c", code + "; print(mp.get_start_method())"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_capar_ca_modules_import_each_other_without_a_cycle():
    """The binding's layers form a DAG (imports inside functions count too), and none of them looks a
    module up in sys.modules instead of importing it."""
    import ast
    import pathlib

    root = pathlib.Path(dbr.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.Attribute) and node.attr == "modules" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                assert path.name == "__init__.py", f"{path.name} looks up sys.modules"
        graph[path.stem] = {d.split(".")[0] for d in deps} - {path.stem}
    graph.pop("__init__")  # the package's lazy names import its modules, never the reverse
    done: set[str] = set()

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        assert mod not in stack, "import cycle: " + " -> ".join(stack + (mod,))
        if mod in done:
            return
        for dep in sorted(graph.get(mod, ())):
            visit(dep, stack + (mod,))
        done.add(mod)

    for mod in sorted(graph):
        visit(mod, ())
    assert {"context", "channel", "binding", "messages"} <= done
