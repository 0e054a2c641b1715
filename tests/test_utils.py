"""``epics.utils`` on capar: the same calls under pyepics and under ``python -m capar.compat``, compared."""
from __future__ import annotations

import os

import pytest

from _diff import assert_same, run_both, run_side

SCRIPT = r'''
import epics.utils as u
out = {"names": sorted(n for n in ("IOENCODING", "str2bytes", "bytes2str", "strjoin", "clib_search_path")
                       if hasattr(u, n)),
       "IOENCODING": u.IOENCODING}
def attempt(f, *args):
    try:
        r = f(*args)
        return {"type": type(r).__name__, "value": r.decode("latin-1") if isinstance(r, bytes) else r}
    except Exception as exc:
        return {"exception": type(exc).__name__}
out["str2bytes"] = [attempt(u.str2bytes, x) for x in ("abc", "", "µ€", b"raw\x00", "a\x00b")]
out["str2bytes_bad"] = [attempt(u.str2bytes, x) for x in (1, None, 2.5)]
out["bytes2str"] = [attempt(u.bytes2str, x) for x in (b"abc", b"", "text", "µ".encode(), 12, 1.5, None,
                                                      [1, 2], b"a\x00b")]
out["strjoin"] = [attempt(u.strjoin, s, q) for s, q in (
    (", ", ["a", "b"]), (b"-", ["a", "b"]), ("", []), ("", ()), ("+", [b"x", b"y"]),
    ("", [b"H", b"i", b"\x00", b"z"]), (b"", [b"\x00"]), (" ", ("one",)), (b"|", [b"a", b"b"]))]
out["strjoin_bad"] = [attempt(u.strjoin, s, q) for s, q in ((", ", [1, 2]), (", ", ["a", b"b"]))]
emit(out)
'''


def test_utils_behave_as_pyepics():
    pyepics, capar = run_both(SCRIPT, timeout=60)
    assert_same(pyepics, capar)


@pytest.mark.parametrize("env", [{"PYEPICS_ENCODING": "latin-1"}, {"PYTHONIOENCODING": "ascii"},
                                 {"PYEPICS_ENCODING": "latin-1", "PYTHONIOENCODING": "utf-8"}])
def test_ioencoding_follows_the_environment(env, monkeypatch):
    monkeypatch.delenv("PYEPICS_ENCODING", raising=False)
    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    code = ('import epics.utils as u\n'
            'emit([u.IOENCODING, u.str2bytes("\\u00b5").decode("latin-1"), u.bytes2str(b"\\xb5")])\n')
    if env.get("PYTHONIOENCODING") == "ascii" and "PYEPICS_ENCODING" not in env:
        # pyepics: 'µ' cannot be encoded (an exception either way); compare only the encoding name
        code = "import epics.utils as u\nemit(u.IOENCODING)\n"
    pyepics, capar = run_both(code, env=env, timeout=60)
    assert_same(pyepics, capar)


def test_clib_search_path_names_a_library():
    capar = run_side("import epics.utils as u\nemit([u.clib_search_path('ca'), u.clib_search_path('Com')])\n",
                     [], {}, True, 60)
    # pyepics answers a relative path inside its own bundled clibs; capar the libraries it loads
    assert all(os.path.isfile(p) for p in capar), capar
    assert "ca" in os.path.basename(capar[0]) and "Com" in os.path.basename(capar[1])


def test_bytes2str_of_undecodable_bytes_as_pyepics():
    code = ("import epics.utils as u\nr = []\n"
            "for b in (b'\\xff\\xfe abc', b'caf\\xe9', b'\\x80', bytes(range(128, 256))):\n"
            "    try:\n        r.append(u.bytes2str(b))\n"
            "    except Exception as exc:\n        r.append(type(exc).__name__)\nemit(r)\n")
    pyepics, capar = run_both(code, timeout=60)
    assert_same(pyepics, capar)
