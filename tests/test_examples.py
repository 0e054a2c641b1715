"""Every example (and the snapshot worker, see also test_workers.py) runs against the session IOC."""
from __future__ import annotations

import os
import re
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


def test_seed_connect_methods(prefix):
    out = run("examples/seed_connect_methods.py", prefix, "300")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    labels = ["Method 0", "Method 1", "Method 2", "Method 3", "capar.acquire"]
    assert [ln.split(" (")[0] for ln in lines[:5]] == labels
    for ln, n in zip(lines, [20, 300, 300, 300, 300]):
        m = re.search(r": (\d+) PVs in ([0-9.]+) s \(.*\), (\d+) values as expected$", ln)
        assert m and int(m.group(1)) == n and int(m.group(3)) == n and float(m.group(2)) > 0, ln
    assert lines[5] == "all methods agree"


def test_seed_poll_vs_sleep(prefix):
    out = run("examples/seed_poll_vs_sleep.py", prefix, "0.6")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("poll(): ") and lines[1].startswith("time.sleep(0.001): ")
    for ln in lines[:2]:
        changes = int(re.search(r": (\d+) changes", ln).group(1))
        assert 3 <= changes <= 9 and ln.endswith("increasing: True"), ln  # counter: 10 Hz
    assert lines[-1] == "done"


def test_seed_with_initial_context(prefix):
    out = run("examples/seed_with_initial_context.py", prefix)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("context is the initial one: True") == 2
    done = dict(re.findall(r"thread '(\w)' done: (\d+) changes seen", out.stdout))
    assert set(done) == {"A", "B"} and int(done["B"]) > int(done["A"]) >= 5   # B ran 1.5 s, A 1 s (counter: 10 Hz)
    assert out.stdout.rstrip().endswith("Done")


def test_seed_capool_map(prefix):
    out = run("examples/seed_capool_map.py", prefix, "40", "2")
    assert out.returncode == 0, out.stderr
    assert f"pool.map(caget): 40 values" in out.stdout and f"{prefix}s39 = 39.0" in out.stdout
    assert "pool.map(caget_many) over 2 chunks: 40 values" in out.stdout
    assert out.stdout.rstrip().endswith("values agree")
    assert "Undefined Behavior" not in out.stderr


def test_worker_snapshot(prefix, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"{prefix}s{i}" for i in range(300)) + f"\n{prefix}nothere\n")
    out = run("workers/snapshot.py", str(names), str(tmp_path / "o.npz"), "--timeout", "1")
    assert out.returncode == 1 and f"{prefix}nothere: not connected" in out.stderr
    import capar

    snap = capar.Snapshot.load(tmp_path / "o.npz")
    assert snap.n_ok == 300 and snap.value[299] == 299.0
