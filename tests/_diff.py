"""Differential runs: the same script under pyepics and under capar (``python -m capar.compat``).

The two libraries never share a process (each loads its own libca): each side is a child process that
prints one JSON line, and the test compares the two results value by value.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Mapping, Optional, Sequence

import pytest

#: prepended to every script: ``enc(value)`` turns values into JSON with their types kept
PRELUDE = r'''
import json as _json, sys as _sys
def enc(v):
    import numpy as _np, ctypes as _ct
    if isinstance(v, _np.ndarray):
        return {"ndarray": v.dtype.kind + str(v.dtype.itemsize), "items": [enc(x) for x in v.tolist()]}
    if isinstance(v, _ct.Array):
        return {"ctypes_array": len(v), "items": [enc(x) for x in list(v)]}
    if isinstance(v, _np.generic):
        return {"npscalar": v.dtype.kind, "value": v.item()}
    if isinstance(v, dict):
        return {str(k): enc(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [enc(x) for x in v]
    if isinstance(v, BaseException):
        return {"exception": type(v).__name__, "message": str(v)}
    if isinstance(v, float) and v != v:
        return "NaN"
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return {"type": type(v).__name__, "repr": repr(v)}
def emit(out):
    _sys.stdout.write("\nRESULT " + _json.dumps(enc(out)) + "\n")
'''


def run_side(code: str, args: Sequence[str], env: Mapping[str, str], capar: bool, timeout: float) -> object:
    """Run PRELUDE + *code* as ``python -c`` (pyepics) or ``python -m capar.compat -c`` (capar)."""
    full = dict(os.environ)
    full.pop("PYTHONPATH", None)
    full.update(env)
    cmd = [sys.executable, *(["-m", "capar.compat"] if capar else []), "-c", PRELUDE + code, *args]
    side = "capar" if capar else "pyepics"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{side} side did not finish in {timeout} s:\n{exc.stdout}\n{exc.stderr}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{side} side failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def run_both(code: str, args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
             timeout: float = 90.0) -> tuple[object, object]:
    """(pyepics result, capar result) of the same script; pyepics runs first."""
    env = dict(env or {})
    return run_side(code, args, env, False, timeout), run_side(code, args, env, True, timeout)


def assert_same(pyepics: object, capar: object, path: str = "") -> None:
    """Equal value by value (floats exactly), with the path of the first difference in the message."""
    if isinstance(pyepics, dict) and isinstance(capar, dict):
        assert sorted(pyepics) == sorted(capar), f"{path}: keys {sorted(pyepics)} != {sorted(capar)}"
        for k in pyepics:
            assert_same(pyepics[k], capar[k], f"{path}.{k}")
    elif isinstance(pyepics, list) and isinstance(capar, list):
        assert len(pyepics) == len(capar), f"{path}: {pyepics!r} != {capar!r}"
        for i, (a, b) in enumerate(zip(pyepics, capar)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert type(pyepics) is type(capar) and pyepics == capar, f"{path}: pyepics {pyepics!r} != capar {capar!r}"
