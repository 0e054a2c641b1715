"""Unchanged pyepics code on capar: ``python -m capar.compat``, the rest of the ``epics``/``epics.ca`` surface,
libca's messages, and the call sequences that used to crash the interpreter.

Every script runs as its own program (a new interpreter, output through pipes), as a user runs it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from capar.testing import IOCSet, db_scalars, unique_prefix

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver start method")


def run(args: list[str], env: "dict[str, str] | None" = None, timeout: float = 60.0,
        cwd: "str | None" = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` with the session IOC's environment (plus *env*); fail with its output on timeout."""
    full = dict(os.environ, **(env or {}))
    full.pop("PYTHONPATH", None)
    try:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full,
                              timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"python {' '.join(args)} did not finish in {timeout} s:\n{exc.stdout}\n{exc.stderr}")


def last_json(proc: subprocess.CompletedProcess) -> object:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- python -m capar.compat -----------------------------------------------------------------------------

SCRIPT = '''
import sys
import epics
from epics import caget, PV
import epics.ca, epics.dbr, epics.pv
from epics.multiproc import CAPool

def work(n):
    import epics
    return epics.__name__, epics.caget(sys.argv[1] + "s%d" % n)

if __name__ == "__main__":
    import json
    with CAPool(2) as pool:
        remote = pool.map(work, range(3))
    print(json.dumps({
        "epics": epics.__name__, "ca": epics.ca.__name__, "dbr": epics.dbr.__name__,
        "same_pv_module": epics.pv is sys.modules["capar.pv"], "argv": sys.argv[1:],
        "ao": caget(sys.argv[1] + "ao"), "pv": PV(sys.argv[1] + "s7").get(), "remote": remote,
    }))
'''


def test_unchanged_script_runs_on_capar_with_its_pool_children(tmp_path, prefix):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = last_json(run(["-m", "capar.compat", str(script), prefix, "extra"]))
    assert out == {
        "epics": "capar", "ca": "capar.ca", "dbr": "capar.ca.dbr", "same_pv_module": True,
        "argv": [prefix, "extra"], "ao": 3.5, "pv": 7.0,
        "remote": [["capar", 0.0], ["capar", 1.0], ["capar", 2.0]],  # the workers import capar as epics too
    }


def test_compat_c_and_subprocess_and_unknown_module(prefix):
    code = textwrap.dedent(f'''
        import json, subprocess, sys, epics
        child = subprocess.run([sys.executable, "-c", "import epics; print(epics.__name__)"],
                               capture_output=True, text=True)
        try:
            import epics.wx
            missing = None
        except ImportError as exc:
            missing = str(exc)
        print(json.dumps([epics.__name__, epics.caget({prefix + "s3"!r}), child.stdout.strip(), missing]))
    ''')
    name, value, child, missing = last_json(run(["-m", "capar.compat", "-c", code]))
    assert (name, value, child) == ("capar", 3.0, "capar")  # subprocesses inherit the alias via PYTHONPATH
    assert "epics.wx" in missing and "capar" in missing


def test_compat_runs_a_pyepics_based_test_module_under_pytest(tmp_path, prefix):
    (tmp_path / "test_user.py").write_text(textwrap.dedent(f'''
        import epics

        def test_caget():
            assert epics.__name__ == "capar"
            assert epics.caget({prefix + "longout"!r}) == 42

        def test_pv():
            pv = epics.get_pv({prefix + "stringin"!r})
            assert pv.get() == "world"
    '''))
    proc = run(["-m", "capar.compat", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                str(tmp_path / "test_user.py")], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_compat_usage_errors():
    proc = run(["-m", "capar.compat"])
    assert proc.returncode == 2 and "usage: python -m capar.compat" in proc.stderr
    proc = run(["-m", "capar.compat", "-x"])
    assert proc.returncode == 2


def test_install_after_pyepics_was_imported_is_refused():
    proc = run(["-c", "import epics, capar.compat\ntry:\n    capar.compat.install()\nexcept RuntimeError as e:\n"
                      "    print('refused:', e)"])
    assert proc.returncode == 0 and "refused:" in proc.stdout and "before the first 'import epics'" in proc.stdout


# -- the names pyepics scripts use ---------------------------------------------------------------------------

def test_from_epics_import_star_gives_what_pyepics_gives():
    code = "ns = {}\nexec('from epics import *', ns)\nimport json\nprint(json.dumps(sorted(k for k in ns if k != '__builtins__')))"
    pyepics_names = set(last_json(run(["-c", code])))
    capar_names = set(last_json(run(["-m", "capar.compat", "-c", code])))
    assert pyepics_names - capar_names == set()
    assert {"acquire", "Group", "Snapshot", "Monitor", "Coordinator"} <= capar_names


def test_module_paths_and_constants():
    import capar
    import capar.ca as ca
    import capar.dbr
    import capar.multiproc
    import capar.version

    assert capar.dbr is capar.ca.dbr
    assert (capar.NO_ALARM, capar.MINOR_ALARM, capar.MAJOR_ALARM, capar.INVALID_ALARM) == (0, 1, 2, 3)
    assert capar.multiproc.CAPool is capar.CAPool and capar.multiproc.CAProcess is capar.CAProcess
    assert capar.version.__version__ == capar.__version__
    assert ca.HAS_NUMPY is True and ca.AUTO_CLEANUP is True and ca.WITH_CA_MESSAGES is False
    assert capar.dbr.Name(20) == "TIME_DOUBLE" and capar.dbr.Name(1) == "INT" and capar.dbr.Name(99) == "unknown"
    assert capar.dbr.Name("ctrl_long", reverse=True) == 33
    assert repr(capar.dbr.AlarmSeverity(2)) == "MAJOR" and repr(capar.dbr.AlarmSeverity(9)) == "UNKNOWN"
    assert capar.dbr.AlarmStatus.HIHI == 3
    assert ca.find_libca().endswith(tuple(f"libca.so{s}" for s in ("", ".7", ""))) or "libca" in ca.find_libca()
    assert os.path.exists(ca.find_libca()) and os.path.exists(ca.find_libCom())
    ca.initialize_libca()
    assert ca.initial_context == ca.current_context()


# -- the crash of the issue, and its relatives ---------------------------------------------------------------

CRASH = '''
import faulthandler, json, sys
faulthandler.enable()
import capar as epics
P = sys.argv[1]
out = [epics.caget(P + "ao", use_monitor=True)]
pv = epics.pv.get_pv(P + "ao")
epics.ca.clear_cache()
pv.disconnect()                                  # cleared a subscription clear_cache had freed: SIGSEGV
ch = epics.ca.create_channel(P + "s1", connect=True)
sub = epics.ca.create_subscription(ch)
out.append(epics.ca.clear_channel(ch))           # the subscription goes with the channel
out.append(epics.ca.clear_subscription(sub))     # ... so this one is not handed to libca again
out.append(epics.ca.clear_channel(ch))
pv2 = epics.PV(P + "ao", auto_monitor=True)
out.append(pv2.get())
epics.ca.clear_cache()
out.append(pv2.reconnect())                      # a new channel after clear_cache
out.append(pv2.get())
pv2.disconnect(); pv2.disconnect()
print(json.dumps(out))
'''


def test_regression_clear_cache_then_disconnect_does_not_crash(tmp_path, prefix):
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    out = last_json(run([str(script), prefix]))
    from capar.ca.errors import ECA

    assert out == [3.5, ECA.NORMAL, ECA.BADMONID, ECA.BADCHID, 3.5, True, 3.5]


# -- libca's messages -------------------------------------------------------------------------------------

MESSAGES = '''
import sys, time, capar.ca as ca
mode = sys.argv[2]
if mode == "on":
    ca.WITH_CA_MESSAGES = True
ca.initialize_libca()
if mode == "writer":
    ca.enable_ca_messages(lambda text: sys.stdout.write("WRITER<" + text.strip() + ">\\n"))
if mode == "stderr":
    ca.enable_ca_messages("stderr")
ch = ca.create_channel(sys.argv[1], connect=True)
print("value", ca.get(ch))
time.sleep(1.0)                 # the second server's answer arrives after the first one's
'''


@pytest.fixture(scope="module")
def twins():
    """Two IOCs serving the same PV name: libca prints "Identical process variable names on multiple servers"."""
    P = unique_prefix("DUP")
    with IOCSet([db_scalars(P, 1), db_scalars(P, 1)], name="twins") as iocs:
        yield iocs, P + "s0"


@pytest.mark.parametrize("mode", ["default", "on", "writer", "stderr"])
def test_libca_messages_off_the_terminal_unless_enabled(tmp_path, twins, mode):
    iocs, name = twins
    script = tmp_path / "messages.py"
    script.write_text(MESSAGES)
    proc = run([str(script), name, mode], env=iocs.env)
    assert proc.returncode == 0, proc.stderr
    assert "value 0.0" in proc.stdout
    text = proc.stdout + proc.stderr
    if mode == "default":  # pyepics' default: nothing from libca on the terminal
        assert "Identical process variable names" not in text, text
    else:
        assert "Identical process variable names" in text, text
    if mode == "writer":  # formatted (vsnprintf), not just the format string: the PV name is in it
        assert any(line.startswith("WRITER<") and name in line for line in proc.stdout.splitlines()), proc.stdout
    if mode in ("on", "stderr"):
        assert name in proc.stderr and "Identical process variable names" in proc.stderr


# -- synchronous groups -------------------------------------------------------------------------------------

def test_synchronous_group_get_put_and_test(prefix):
    import capar.ca as ca

    a = ca.create_channel(prefix + "ao", connect=True)
    s = ca.create_channel(prefix + "stringin", connect=True)
    w = ca.create_channel(prefix + "wf_long", connect=True)
    gid = ca.sg_create()
    data = [ca.sg_get(gid, a), ca.sg_get(gid, s), ca.sg_get(gid, w, as_string=False)]
    assert ca.sg_block(gid, timeout=5.0) == ca.dbr.ECA_NORMAL
    assert ca.sg_test(gid) is True  # never libca's ca_sg_test: it aborts a preemptive-callback process
    # sg_get's default is as_string=True (pyepics): a scalar reads as str()
    assert ca._unpack(a, data[0]) == "3.5" and ca._unpack(data[1], chid=s) == "world"
    assert ca._unpack(w, data[2]).tolist() == [1, 2, 3, 4, 5] + [0] * 11  # a group reads NELM elements
    t = ca.create_channel(prefix + "s1500", connect=True)
    before = ca.get(t)
    try:
        assert ca.sg_put(gid, t, 77.25) is True
        assert ca.sg_block(gid, 5.0) == ca.dbr.ECA_NORMAL
        assert ca.get(t) == 77.25
    finally:
        ca.put(t, before, wait=True)
    assert ca.sg_reset(gid) is True
    assert ca.sg_delete(gid) is True
    with pytest.raises(ca.ChannelAccessException):
        ca._unpack(a, None)


def test_access_rights_callbacks_and_decorators(prefix):
    import capar.ca as ca

    seen = []
    ch = ca.create_channel(prefix + "longin", connect=True)
    ca.replace_access_rights_event(ch, callback=lambda r, w: seen.append((r, w)))
    assert seen[:1] == [(True, True)]

    @ca.withConnectedCHID
    def value(chid, timeout=1.0):
        return ca.get(chid)

    assert value(ch) == -7
    with pytest.raises(ca.CASeverityException):
        ca.PySEVCHK("x", ca.dbr.ECA_TIMEOUT)
    assert ca.PySEVCHK("x", ca.dbr.ECA_NORMAL) is True
    assert "longin" in ca.show_cache(print_out=False)
