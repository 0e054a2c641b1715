"""The capar command line, run as a subprocess against the session IOC."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "capar", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def test_get_values_and_exit_status(prefix):
    out = run("get", "-w", "2", prefix + "ao", prefix + "mbbo", prefix + "wf_double")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"{prefix}ao 3.5" and lines[1] == f"{prefix}mbbo Two"
    assert lines[2] == f"{prefix}wf_double 5 1.0 2.0 3.0 4.0 5.0"
    assert run("get", "-n", prefix + "mbbo").stdout.strip() == f"{prefix}mbbo 2"
    bad = run("get", "-w", "0.5", prefix + "ao", prefix + "nothere")
    assert bad.returncode == 1 and prefix + "nothere: not connected" in bad.stderr
    assert bad.stdout.strip() == f"{prefix}ao 3.5"


def test_put_and_snapshot(prefix, tmp_path):
    out = run("put", "--wait", prefix + "s1950", "6.5")
    assert out.returncode == 0 and out.stdout.strip() == f"{prefix}s1950 6.5"
    path = tmp_path / "snap.json"
    names = tmp_path / "names.txt"
    names.write_text(f"# a comment\n{prefix}s1950\n{prefix}stringin\n")
    snap = run("snapshot", "-f", str(names), "-o", str(path))
    assert snap.returncode == 0, snap.stderr
    doc = json.loads(path.read_text())
    assert [(r["name"], r["value"]) for r in doc["pvs"]] == [(prefix + "s1950", 6.5), (prefix + "stringin", "world")]


def test_usage_errors_exit_2(tmp_path):
    assert run("frobnicate").returncode == 2
    assert run("get").returncode == 2
    assert run("get", "-f", str(tmp_path / "missing.txt")).returncode == 2
