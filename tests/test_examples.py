"""Every example and worker script runs against the session IOC."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def test_seed_get_complete(prefix):
    out = run("examples/seed_get_complete.py", prefix, "500")
    assert out.returncode == 0, out.stderr
    assert f"500 values" in out.stdout and f"{prefix}s0 = 0.0" in out.stdout


def test_seed_threads(prefix):
    out = run("examples/seed_threads.py", prefix)
    assert out.returncode == 0, out.stderr
    assert "Completed Thread  A" in out.stdout and "Completed Thread  B" in out.stdout
    assert "(A)" in out.stdout and "(B)" in out.stdout


def test_seed_multiprocessing(prefix):
    out = run("examples/seed_multiprocessing.py", prefix)
    assert out.returncode == 0, out.stderr
    assert f"child: [('{prefix}ao', '3.500'), ('{prefix}mbbo', 'Two')]" in out.stdout
    assert "Undefined Behavior" not in out.stderr


def test_worker_snapshot(prefix, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"{prefix}s{i}" for i in range(300)) + f"\n{prefix}nothere\n")
    out = run("workers/snapshot.py", str(names), str(tmp_path / "o.npz"), "--timeout", "1")
    assert out.returncode == 1 and f"{prefix}nothere: not connected" in out.stderr
    import capar

    snap = capar.Snapshot.load(tmp_path / "o.npz")
    assert snap.n_ok == 300 and snap.value[299] == 299.0
