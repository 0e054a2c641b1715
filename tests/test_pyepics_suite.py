"""pyepics' own test suite, run against capar through ``python -m capar.compat -m pytest``.

The tests come from the sdist of the pyepics release installed as the oracle (downloaded once from PyPI into
the virtual environment), and run against their own test IOC (``tests/Setup/pydebug.db`` and
``pyclearcache.db``, served on loopback by :class:`capar.testing.IOC`) with their value simulator running under
pyepics.  Measured on this project's machine: of its 103 tests, 102 pass under pyepics 3.5.10 against this
IOC and all 103 pass under capar (``CAPAR_PYEPICS_SUITE=all``; ``test_ca_clearcache``'s ``test_subscribe``
fails under pyepics).  ``make test`` runs the files below (about a minute);
``CAPAR_PYEPICS_SUITE=all`` runs all of them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import pytest

from capar.testing import IOC, stop_processes

pytest.importorskip("epics", reason="pyepics (the test extra) is the oracle")

#: run by `make test`; the others run with CAPAR_PYEPICS_SUITE=all
DEFAULT_FILES = ["test_ca_unittests.py", "test_pv_unittests.py", "test_pv_typeconversion.py", "test_aodevice.py",
                 "test_pvsubarray.py", "test_threading.py", "test_multiprocessing.py", "test_pv_callback.py"]


def _suite_sources() -> Path:
    """The ``tests`` directory of the installed pyepics version's sdist (cached under ``sys.prefix``)."""
    version = metadata.version("pyepics")
    cache = Path(sys.prefix) / "capar-oracle" / f"pyepics-{version}-tests"
    if (cache / "pvnames.py").exists():
        return cache
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", f"pyepics=={version}", "--no-binary",
                               ":all:", "--no-deps", "--disable-pip-version-check", "-q", "-d", tmp],
                              capture_output=True, text=True, timeout=300)
        archives = list(Path(tmp).glob("pyepics-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            pytest.skip(f"cannot download the pyepics {version} sdist (offline?): {proc.stderr[-500:]}")
        staging = Path(tmp) / "x"
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if "/tests/" in m.name and ".." not in m.name
                       and (m.isfile() or m.isdir())]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **safe)
        found = next(staging.glob("pyepics-*/tests"))
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(found, str(cache) + ".tmp", dirs_exist_ok=True)
        os.replace(str(cache) + ".tmp", cache)
    return cache


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """(copy of pyepics' tests directory, client environment) with its IOC and simulator running."""
    src = _suite_sources()
    work = tmp_path_factory.mktemp("pyepics-tests") / "tests"
    shutil.copytree(src, work)
    db = "".join((src / "Setup" / f).read_text().replace("$(P)", p)
                 for f, p in (("pydebug.db", "PyTest:"), ("pyclearcache.db", "PyTestClearCache:")))
    with IOC(db, name="pyepics-suite", max_array_bytes=20100300) as ioc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_") and k != "PYTHONPATH"}
        env.update(ioc.env)
        sim = subprocess.Popen([sys.executable, str(work / "Setup" / "simulator.py")], env=env,
                               cwd=str(work / "Setup"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(2.0)  # the simulator connects and writes its first values
            assert sim.poll() is None, sim.stderr.read().decode() if sim.stderr else ""
            yield work, env
        finally:
            import psutil

            stop_processes([psutil.Process(sim.pid)], grace=3.0)
            sim.wait(10)
            if sim.stderr is not None:
                sim.stderr.close()


def _outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        bad = [el for el in case if el.tag in ("failure", "error")]
        name = f"{case.get('classname')}::{case.get('name')}"
        out[name] = "skipped" if case.find("skipped") is not None else \
            f"FAILED: {(bad[0].get('message') or '')[:300]}" if bad else "passed"
    return out


@pytest.mark.timeout(1200)
def test_pyepics_own_suite_passes_on_capar(suite, tmp_path):
    work, env = suite
    chosen = os.environ.get("CAPAR_PYEPICS_SUITE", "")
    files = sorted(p.name for p in work.glob("test_*.py")) if chosen == "all" else \
        [f for f in DEFAULT_FILES if (work / f).exists()]
    assert files, f"no pyepics test files in {work}"
    outcomes: dict[str, str] = {}
    logs = []
    for name in files:  # one process per file, as they are run upstream: some change process-wide settings
        junit = tmp_path / f"{name}.xml"
        proc = subprocess.run([sys.executable, "-m", "capar.compat", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-c", os.devnull, "--rootdir", str(work), "--timeout", "120", f"--junitxml={junit}",
                               name], cwd=str(work), env=env, capture_output=True, text=True, timeout=600)
        found = _outcomes(junit) if junit.exists() else {}
        outcomes.update(found)
        if proc.returncode != 0 or not found:
            logs.append(f"--- {name} (exit status {proc.returncode})\n{proc.stdout[-1500:]}\n{proc.stderr[-1000:]}")
    failed = {k: v for k, v in outcomes.items() if v.startswith("FAILED")}
    assert not logs and not failed and outcomes, \
        f"{len(failed)} of {len(outcomes)} pyepics tests failed on capar:\n" + \
        "\n".join(f"  {k}: {v}" for k, v in failed.items()) + "\n" + "\n".join(logs)
    assert sum(v == "passed" for v in outcomes.values()) >= 50  # the chosen files hold about 60 tests
