"""The capar command line, run as subprocesses against the session IOC (and a private one for writes of every
type).  Writes to the session IOC use s1000..s1199 only, and are undone."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import capar
from capar.testing import IOC, db_all_types, db_scalars, unique_prefix

TIME_RE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}"


def run(*args, timeout=60, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "capar", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or dict(os.environ), **kw)


def popen(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "capar", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or dict(os.environ), **kw)


def stop(proc):
    """Make sure a Popen we started is gone (by its handle)."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@pytest.fixture(scope="module")
def priv():
    """A private IOC for tests that write every record type (the session IOC's are read by other tests)."""
    P = unique_prefix("CLI")
    with IOC(db_all_types(P) + db_scalars(P, 10), name="cli", prefix=P) as ioc:
        yield ioc


def priv_env(ioc):
    env = dict(os.environ)
    env.update(ioc.env)
    return env


def put_back(prefix, lo, hi):
    names = [f"{prefix}s{i}" for i in range(lo, hi)]
    assert capar.caput_many(names, [float(i) for i in range(lo, hi)], wait=True) == [1] * len(names)


# --------------------------------------------------------------------------------------------------
# get / put / info

def pad(name):
    """caget's name column for scalars (%-30s)."""
    return "%-30s" % name


def test_get_values_and_exit_status(prefix):
    out = run("get", "-w", "2", prefix + "ao", prefix + "mbbo", prefix + "wf_double", prefix + "stringin")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [  # EPICS base caget: %-30s names, NELM elements after the count
        f"{pad(prefix + 'ao')} 3.5", f"{pad(prefix + 'mbbo')} Two",
        f"{prefix}wf_double 16 1 2 3 4 5 0 0 0 0 0 0 0 0 0 0 0", f"{pad(prefix + 'stringin')} world"]
    assert run("get", "-n", prefix + "mbbo").stdout == f"{pad(prefix + 'mbbo')} 2\n"
    bad = run("get", "-w", "0.5", prefix + "ao", prefix + "nothere")
    assert bad.returncode == 1 and bad.stderr.strip() == f"{prefix}nothere: not connected"
    assert bad.stdout == f"{pad(prefix + 'ao')} 3.5\n"


def test_get_terse_in_a_shell_pipeline(prefix):
    """x=$(capar get -t PV): the value alone."""
    cmd = f'x=$("{sys.executable}" -m capar get -t {prefix}ao); y=$("{sys.executable}" -m capar get -t ' \
          f'-c {prefix}wf_long); echo "[$x] [$y]"'
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "[3.5] [5 1 2 3 4 5]\n", out.stderr


def test_get_epics_format_options(prefix):
    P = prefix

    def get(*args):
        out = run("get", *args)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert get("-c", P + "wf_long") == f"{P}wf_long 5 1 2 3 4 5\n"           # current length (callback get)
    assert get("-#", "3", P + "wf_long") == f"{P}wf_long 3 1 2 3\n"
    assert get("-#", "1", P + "ao") == f"{pad(P + 'ao')} 1 3.5\n"            # -# prints the count
    assert get("-t", "-c", "-F", ",", P + "wf_long") == "5,1,2,3,4,5\n"
    assert get("-F", ",", P + "ao", P + "mbbo") == f"{P}ao,3.5\n{P}mbbo,Two\n"
    assert get("-f3", P + "ao") == f"{pad(P + 'ao')} 3.500\n"
    assert get("-e", "2", P + "ao") == f"{pad(P + 'ao')} 3.50e+00\n"
    assert get("-g4", P + "ai") == f"{pad(P + 'ai')} 1.25\n"
    assert get("-s", P + "ao") == f"{pad(P + 'ao')} 3.500\n"                # the server's PREC 3
    assert get("-0x", P + "longin", P + "longout") == f"{pad(P + 'longin')} 0xFFFFFFF9\n{pad(P + 'longout')} 0x2A\n"
    assert get("-0o", P + "longout") == f"{pad(P + 'longout')} 0o52\n"
    assert get("-0b", P + "longout") == f"{pad(P + 'longout')} 101010\n"
    assert get("-lx", P + "ao") == f"{pad(P + 'ao')} 0x4\n"                  # 3.5 rounded to a long
    assert get("-S", P + "wf_text") == f"{P}wf_text Hello EPICS\n"
    assert get("-c", P + "wf_string") == f"{P}wf_string 3 a bb ccc\n"
    assert get("-t", P + "stringout") == "hello\n"


def test_get_wide_and_dbr_types(prefix):
    out = run("get", "-a", prefix + "ao", prefix + "calc_alarm")
    assert out.returncode == 0, out.stderr
    a, c = out.stdout.splitlines()
    assert re.fullmatch(rf"{re.escape(pad(prefix + 'ao'))} {TIME_RE} 3\.5  ", a), a  # no alarm: two separators
    assert re.fullmatch(rf"{re.escape(pad(prefix + 'calc_alarm'))} {TIME_RE} 20 HIHI MAJOR", c), c
    stamp = time.mktime(time.strptime(a.split()[1] + " " + a.split()[2].split(".")[0], "%Y-%m-%d %H:%M:%S"))
    assert abs(stamp - capar.acquire([prefix + "ao"]).timestamp[0]) < 1.5
    d = run("get", "-d", "CTRL_DOUBLE", prefix + "ao").stdout
    assert d == (f"{prefix}ao\n    Native data type: DBF_DOUBLE\n    Request type:     DBR_CTRL_DOUBLE\n"
                 "    Element count:    1\n    Value:            3.5\n    Status:           NO_ALARM\n"
                 "    Severity:         NO_ALARM\n    Units:            mm\n    Precision:        3\n"
                 "    Lo disp limit:    -10\n    Hi disp limit:    10\n    Lo alarm limit:   -8\n"
                 "    Lo warn limit:    -6\n    Hi warn limit:    6\n    Hi alarm limit:   8\n"
                 "    Lo ctrl limit:    -9\n    Hi ctrl limit:    9\n")
    t = run("get", "-d", "20", prefix + "calc_alarm").stdout.splitlines()
    assert t[1:4] == ["    Native data type: DBF_DOUBLE", "    Request type:     DBR_TIME_DOUBLE",
                      "    Element count:    1"]
    assert re.fullmatch(rf"    Timestamp:        {TIME_RE}", t[5]) and t[6:] == [
        "    Status:           HIHI", "    Severity:         MAJOR"]
    e = run("get", "-d", "gr_enum", prefix + "mbbi").stdout.splitlines()
    assert e[4] == "    Value:            B" and e[7:] == [
        "    Enums:            ( 4)", "                      [ 0] A", "                      [ 1] B",
        "                      [ 2] C", "                      [ 3] D"]
    assert run("get", "-d", "99", prefix + "ao").returncode == 2


def test_get_char_arrays(prefix):
    text = run("get", "-S", prefix + "wf_text", prefix + "wf_char")
    assert text.stdout.splitlines() == [f"{prefix}wf_text Hello EPICS", f"{prefix}wf_char \\001\\002\\003\\004\\005"
                                        .replace("\\00", "\\x0")]
    nums = run("get", "-c", prefix + "wf_char")
    assert nums.stdout.strip() == f"{prefix}wf_char 5 1 2 3 4 5"


def test_default_timeout_is_epics_cli_timeout(prefix):
    t0 = time.monotonic()
    out = run("get", prefix + "nothere")                        # EPICS base's tools: 1 s
    assert out.returncode == 1 and time.monotonic() - t0 < 8
    env = dict(os.environ, EPICS_CLI_TIMEOUT="0.2")
    assert "EPICS_CLI_TIMEOUT or 1" in run("get", "-h").stdout
    t0 = time.monotonic()
    assert run("get", prefix + "nothere", env=env).returncode == 1
    short = time.monotonic() - t0
    assert short < 8


def test_put_wait_and_readback(prefix):
    try:
        out = run("put", "--wait", prefix + "s1100", "6.5")
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"Old : {pad(prefix + 's1100')} 1100\nNew : {pad(prefix + 's1100')} 6.5\n"
        assert capar.caget(prefix + "s1100", use_monitor=False) == 6.5
        assert run("put", "-t", prefix + "s1100", "7").stdout == "7\n"
        bad = run("put", prefix + "s1100", "abc")
        assert bad.returncode == 1 and "bad value" in bad.stderr
        gone = run("put", "-w", "0.5", prefix + "nothere", "1")
        assert gone.returncode == 1 and gone.stderr.strip() == f"{prefix}nothere: not connected"
    finally:
        put_back(prefix, 1100, 1101)


def test_put_every_type(priv):
    P, env = priv.prefix, priv_env(priv)

    def put(*args):
        out = run("put", "-c", "-t", *args, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout.rstrip("\n")

    assert put(P + "mbbo", "One") == "One"
    assert put(P + "mbbo", "3") == "Three"           # not a state name: an index (caput's default)
    assert put("-n", P + "mbbo", "0") == "0"
    assert '"Zero"' in priv.dbgf(P + "mbbo")
    bad = run("put", "-s", P + "mbbo", "2", env=env)  # -s: state names only
    assert bad.returncode == 2 and "Enum string value '2' invalid." in bad.stderr
    assert put(P + "stringout", "new", "text") == "new text"   # arguments joined, as caput
    assert put("-a", P + "wf_double", "2", "1.5", "2.5") == "16 1.5 2.5 " + " ".join(["0"] * 14)
    assert put("-a", P + "wf_long", "3", "7", "8", "9") == "16 7 8 9 " + " ".join(["0"] * 13)
    assert put("-S", P + "wf_text", "Hi there") == "Hi there"
    assert put("-S", P + "wf_text", "tab\\there") == "tab\\there"  # C escapes in, C escapes out
    assert put(P + "wf_text", "Hi there") == "64 " + " ".join(str(ord(c)) for c in "Hi there") + " 0" * 56
    assert put("-a", P + "wf_string", "2", "x", "yy") == "16 x yy" + " " * 14
    assert put(P + "longout", "-12") == "-12"
    long = run("put", "-l", P + "longout", "5", env=env).stdout.splitlines()
    assert re.fullmatch(rf"Old : {re.escape(pad(P + 'longout'))} {TIME_RE} -12  ", long[0]), long
    assert re.fullmatch(rf"New : {re.escape(pad(P + 'longout'))} {TIME_RE} 5  ", long[1]), long
    bad = run("put", "-a", P + "wf_long", "3", "1", env=env)
    assert bad.returncode == 2 and "count 3 but 1 values" in bad.stderr


def test_info(prefix):
    out = run("info", prefix + "ao", prefix + "wf_long", prefix + "nothere", "-w", "0.5")
    assert out.returncode == 1
    blocks = out.stdout.split(f"{prefix}wf_long\n")
    assert blocks[0] == (f"{prefix}ao\n    State:            connected\n"
                         f"    Host:             {blocks[0].split('Host:')[1].split()[0]}\n"
                         "    Access:           read, write\n    Native data type: DBF_DOUBLE\n"
                         "    Request type:     DBR_DOUBLE\n    Element count:    1\n")
    assert re.match(r"\S+:\d+$", blocks[0].split("Host:")[1].split()[0])
    assert blocks[1].endswith("    Native data type: DBF_LONG\n    Request type:     DBR_LONG\n"
                              "    Element count:    16\n")
    assert out.stderr.splitlines()[-1] == f"{prefix}nothere: not connected"
    verbose = run("info", "-v", prefix + "ao")
    assert f"== {prefix}ao" in verbose.stdout and "units           = mm" in verbose.stdout
    status = run("info", "-s", "1")
    assert status.returncode == 0 and "Channel Access Client Context" in status.stdout + status.stderr


# --------------------------------------------------------------------------------------------------
# monitor

MON_RE = r"(\S+) +({t}) (.*?)(  | (\S+) (\S+))"


def test_monitor_count(prefix):
    out = run("monitor", "--count", "6", prefix + "counter", prefix + "mbbo", prefix + "longout")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 6
    rows = [re.fullmatch(MON_RE.format(t=TIME_RE), ln) for ln in lines]
    assert all(rows), lines
    assert all(len(ln.split(" ", 1)[0]) <= 30 and ln[30] == " " for ln in lines)  # %-30s names
    by_name = {}
    for m in rows:
        by_name.setdefault(m.group(1), []).append(m.group(3))
    assert by_name[prefix + "mbbo"] == ["Two"] and by_name[prefix + "longout"] == ["42"]
    counts = [float(v) for v in by_name[prefix + "counter"]]
    assert counts == sorted(counts) and len(counts) == 4 and counts[-1] - counts[0] == 3
    assert abs(counts[-1] - capar.caget(prefix + "counter", use_monitor=False)) < 30


def test_monitor_mask_and_time_modes(prefix):
    alarm_only = run("monitor", "-m", "a", "--seconds", "0.6", prefix + "counter")
    assert alarm_only.returncode == 0 and len(alarm_only.stdout.splitlines()) == 1  # the initial value only
    rel = run("monitor", "-t", "sI", "--count", "3", prefix + "counter").stdout.splitlines()
    assert re.fullmatch(rf"\S+ +{TIME_RE} \d+  ", rel[0]), rel
    assert all(re.fullmatch(r"\S+ +\s{14}\s*\+0\.\d{6} \d+  ", ln) for ln in rel[1:]), rel
    none = run("monitor", "-t", "n", "--count", "1", prefix + "ao").stdout
    assert none == f"{pad(prefix + 'ao')}  3.5  \n"
    assert run("monitor", "-m", "xyz", prefix + "ao").returncode == 2


def test_monitor_seconds_and_never_connected(prefix):
    t0 = time.monotonic()
    out = run("monitor", "--seconds", "0.5", "-w", "0.5", "-n", prefix + "mbbo", prefix + "nothere")
    assert time.monotonic() - t0 < 20
    assert out.returncode == 1
    assert re.fullmatch(rf"{re.escape(pad(prefix + 'mbbo'))} {TIME_RE} 2  ", out.stdout.rstrip("\n")), out.stdout
    assert out.stderr.strip() == f"{prefix}nothere: not connected"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_monitor_stops_cleanly_on_signal(prefix, sig, code):
    proc = popen("monitor", prefix + "counter")
    try:
        first = proc.stdout.readline()
        assert first.startswith(prefix + "counter ")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        stop(proc)
    assert proc.returncode == code
    assert "Traceback" not in err and err.strip() in ("capar: interrupted", "capar: terminated")


# --------------------------------------------------------------------------------------------------
# snapshot / diff / restore

def test_snapshot_sources_and_formats(prefix, tmp_path):
    (tmp_path / "top.req").write_text("# request\n$(P)ao\nfile sub/more.req N=$(N=1003)\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.req").write_text("$(P)s$(N)\n${P}stringin\n")
    expect = [prefix + "ao", prefix + "s1003", prefix + "stringin"]
    js = run("snapshot", "-r", tmp_path / "top.req", "-m", f"P={prefix}", "--format", "json")
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert [(r["name"], r["value"]) for r in doc["pvs"]] == list(zip(expect, [3.5, 1003.0, "world"]))
    csv_out = run("snapshot", *expect, "--format", "csv")
    assert csv_out.stdout.startswith("# capar-snapshot-1") and f"{prefix}stringin,str" in csv_out.stdout
    text = run("snapshot", *expect, prefix + "nothere", "-w", "0.5")
    assert text.returncode == 1 and text.stderr.strip() == f"{prefix}nothere: not connected"
    assert text.stdout.splitlines() == [f"{prefix}ao 3.5", f"{prefix}s1003 1003.0", f"{prefix}stringin world",
                                        f"{prefix}nothere <not connected>"]
    npz = subprocess.run([sys.executable, "-m", "capar", "snapshot", *expect, "--format", "npz"],
                         capture_output=True, timeout=60, env=dict(os.environ))
    assert npz.returncode == 0 and npz.stdout[:2] == b"PK"
    (tmp_path / "stdout.npz").write_bytes(npz.stdout)
    assert capar.Snapshot.load(tmp_path / "stdout.npz").to_dict() == dict(zip(expect, [3.5, 1003.0, "world"]))
    for suffix in ("json", "csv", "npz", "txt"):
        path = tmp_path / f"o.{suffix}"
        out = run("snapshot", *expect, "-o", path)
        assert out.returncode == 0 and f"3 PVs, 3 ok" in out.stdout, out.stderr
        if suffix != "txt":
            assert capar.Snapshot.load(path).to_dict() == dict(zip(expect, [3.5, 1003.0, "world"]))
    assert (tmp_path / "o.txt").read_text() == text.stdout.replace(f"{prefix}nothere <not connected>\n", "")
    assert not list(tmp_path.glob(".capar-*"))
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "o.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_snapshot_sharded_in_chunks_matches_acquire(prefix, tmp_path):
    names = [prefix + f"s{i}" for i in range(0, 2000, 7)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    out = run("snapshot", "-f", tmp_path / "names.txt", "--processes", "2", "--chunk", "100",
              "-o", tmp_path / "s.npz", timeout=120)
    assert out.returncode == 0, out.stderr
    snap = capar.Snapshot.load(tmp_path / "s.npz")
    ref = capar.acquire(names)
    assert list(snap.names) == names and snap.ok.all()
    assert not snap.diff(ref)


def test_snapshot_change_restore_diff_roundtrip(prefix, tmp_path):
    names = [prefix + f"s{i}" for i in range(1000, 1100)]
    path = tmp_path / "snap.npz"
    try:
        assert run("snapshot", *names, "-o", path).returncode == 0
        new = [float(-i) for i in range(1000, 1100)]
        assert capar.caput_many(names, new, wait=True) == [1] * 100
        d = run("diff", path)
        assert d.returncode == 1
        assert d.stdout.splitlines()[0] == f"changed {prefix}s1000: 1000.0 -> -1000.0"
        assert len(d.stdout.splitlines()) == 100
        dry = run("restore", "--dry-run", path)
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines()[1] == f"would write {prefix}s1001: -1001.0 -> 1001.0"
        assert capar.caget(prefix + "s1001", use_monitor=False) == -1001.0  # nothing written
        res = run("restore", "--wait", path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == [f"{prefix}s{i} ok {float(i)!r}" for i in range(1000, 1100)]
        assert capar.caget_many(names) == [float(i) for i in range(1000, 1100)]
        same = run("diff", path)
        assert same.returncode == 0 and same.stdout.strip() == "no differences"
        two = run("snapshot", *names, "-o", tmp_path / "again.json")
        assert two.returncode == 0
        assert run("diff", path, tmp_path / "again.json").stdout.strip() == "no differences"
    finally:
        put_back(prefix, 1000, 1100)


def test_restore_every_type_and_diff(priv, tmp_path):
    P, env = priv.prefix, priv_env(priv)
    names = [P + n for n in ("ao", "bo", "mbbo", "longout", "stringout", "int64out", "wf_char", "wf_short",
                             "wf_long", "wf_float", "wf_double", "wf_string", "wf_text", "wf_empty", "s3")]
    path = tmp_path / "all.json"
    snap = run("snapshot", *names, "-o", path, env=env)
    assert snap.returncode == 0, snap.stderr
    before = run("get", *names, env=env)
    changes = [("ao", "-1.25"), ("bo", "0"), ("mbbo", "One"), ("longout", "7"), ("stringout", "other"),
               ("int64out", "12"), ("wf_char", "-a 2 9 9"), ("wf_long", "-a 7 1 2 3 4 5 6 7"), ("wf_float", "0.5"),
               ("wf_string", "-a 2 p q"), ("wf_text", "changed text"), ("s3", "33")]
    for rec, value in changes:
        args = value.split(" ")
        out = run("put", *(["-a", P + rec, *args[1:]] if args[0] == "-a" else [P + rec, *args]), env=env)
        assert out.returncode == 0, out.stderr
    d = run("diff", path, env=env)
    assert d.returncode == 1
    assert {ln.split(" ")[1].rstrip(":") for ln in d.stdout.splitlines()} == {P + rec for rec, _ in changes}
    res = run("restore", path, "--wait", env=env)
    assert res.returncode == 0, res.stderr
    assert [ln.split(" ")[:2] for ln in res.stdout.splitlines()] == [[n, "ok"] for n in names]
    assert run("diff", path, env=env).stdout.strip() == "no differences"
    after = run("get", *names, env=env)
    assert after.returncode == 0 and after.stdout == before.stdout


def test_restore_reports_gone_and_refused_pvs(priv, tmp_path):
    P, env = priv.prefix, priv_env(priv)
    path = tmp_path / "s.json"
    assert run("snapshot", P + "s1", P + "ao.RTYP", P + "s2", P + "ao.NAME", "-o", path, env=env).returncode == 0
    doc = json.loads(path.read_text())
    doc["pvs"][0]["name"] = P + "gone"           # a PV that no longer exists
    doc["pvs"][1]["value"] = "bo"               # a field that refuses writes (read-back differs)
    doc["pvs"][3]["value"] = "renamed"          # a field without write access
    doc["pvs"].append(dict(doc["pvs"][2], name=P + "s4", ok=False, error="timeout"))
    path.write_text(json.dumps(doc))
    run("put", P + "s2", "22", env=env)
    res = run("restore", path, "-w", "1", env=env)
    assert res.returncode == 1
    assert res.stdout.splitlines() == [f"{P}s4 skipped (saved with error: timeout)", f"{P}s2 ok 2.0"]
    err = res.stderr
    assert f"{P}gone: not connected" in err and f"{P}ao.NAME: no write access" in err
    assert re.search(rf"{re.escape(P)}ao\.RTYP: (read-back 'ao' != saved 'bo'|.*fail)", err), err
    assert "restored 1 of 4 PVs" in err
    waited = run("restore", path, "-w", "1", "--wait", env=env)
    assert waited.returncode == 1 and f"{P}ao.RTYP: " in waited.stderr


# --------------------------------------------------------------------------------------------------
# usage errors, bad files, progress bar, ioc

def test_usage_errors_exit_2(tmp_path, prefix):
    for args in (["frobnicate"], ["get", "--bogus", "x"], [], ["restore"], ["snapshot", "x", "--format", "xml"]):
        out = run(*args)
        assert out.returncode == 2 and "usage: capar" in out.stderr, args
    assert run("get").returncode == 2
    missing = run("get", "--file", tmp_path / "missing.txt")
    assert missing.returncode == 2 and missing.stderr.strip() == f"capar: {tmp_path / 'missing.txt'}: no such file"
    assert run("snapshot", prefix + "ao", "-o", tmp_path / "x.xyz").returncode == 2
    assert run("get", prefix + "ao", "-m", "P=x").returncode == 2


def test_bad_files_one_line_with_file_and_line(tmp_path, prefix):
    req = tmp_path / "bad.req"
    req.write_text(f"{prefix}ao\n$(P)s1\n")
    out = run("snapshot", "-r", req)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"capar: {req}:2: undefined macro $(P) (define it with -m P=... or "
                                       "give a default $(P=...))"]
    assert run("snapshot", "-r", req, "-m", "P=", "-w", "0.5").returncode == 1  # 's1' is no PV: a failed PV, not a usage error
    bad_macro = run("snapshot", "-r", req, "-m", "P")
    assert bad_macro.returncode == 2 and bad_macro.stderr.startswith("capar: -m: bad macro definition")
    inc = tmp_path / "inc.req"
    inc.write_text("x:1\nfile nothere.req\n")
    out = run("get", "-r", inc)
    assert out.returncode == 2 and out.stderr.startswith(f"capar: {inc}:2: included file 'nothere.req' not found")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"format": "capar-snapshot-1",\n "pvs": [\n oops]}\n')
    for cmd in (["restore", bad_json], ["diff", bad_json], ["restore", "--dry-run", bad_json]):
        out = run(*cmd)
        assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
        assert out.stderr.startswith(f"capar: {bad_json}:3: invalid JSON"), out.stderr
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("# capar-snapshot-1,time,0\nname,kind,value,status,severity,timestamp,ok,error\nx,float\n")
    out = run("diff", bad_csv, bad_csv)
    assert out.returncode == 2 and out.stderr.startswith(f"capar: {bad_csv}:3: bad row")
    gone = run("restore", tmp_path / "nope.npz")
    assert gone.returncode == 2 and gone.stderr.strip() == f"capar: {tmp_path / 'nope.npz'}: no such file"


def test_progress_bar_only_on_a_terminal(prefix, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    names = [prefix + f"s{i}" for i in range(300)]
    (tmp_path / "n.txt").write_text("\n".join(names))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        proc = subprocess.Popen([sys.executable, "-m", "capar", "snapshot", "-f", str(tmp_path / "n.txt"),
                                 "--chunk", "100", "-o", str(tmp_path / "p.npz")], stdout=subprocess.PIPE,
                                stderr=slave, env=dict(os.environ))
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out, _ = proc.communicate(timeout=60)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    err = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "snapshot" in err and "/300" in err and "PV" in err
    plain = run("snapshot", "-f", tmp_path / "n.txt", "--chunk", "100", "-o", tmp_path / "q.npz")
    assert plain.returncode == 0 and plain.stderr == ""


def test_progress_degrades_without_tqdm(monkeypatch):
    from capar import cli

    class TTY:
        def isatty(self):
            return True

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", TTY())
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    bar = cli._progress(10, "x")
    bar.update(5)
    bar.close()
    assert isinstance(bar, cli._NoBar)


def test_atomic_write_leaves_nothing_on_interrupt(tmp_path, monkeypatch):
    from capar import cli

    target = tmp_path / "out.txt"
    target.write_text("old")

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        cli._atomic_write(str(target), b"new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_ioc_subcommand_and_ctrl_c(tmp_path):
    proc = popen("ioc", "--pvs", "5", "--prefix", "CLIIOC:")
    try:
        env = dict(os.environ)
        for line in proc.stdout:
            if line.startswith("export "):
                k, v = line[len("export "):].strip().split("=", 1)
                env[k] = v
            if line.startswith("# prefix="):
                break
        assert env["EPICS_CA_ADDR_LIST"].startswith("127.0.0.1:")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        out = run("get", "CLIIOC:s4", "CLIIOC:ao", env=env)
        assert out.stdout.splitlines() == [f"{pad('CLIIOC:s4')} 4", f"{pad('CLIIOC:ao')} 3.5"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 130, err
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive


def test_console_script_and_version():
    script = Path(sys.executable).with_name("capar")
    if not script.exists():
        pytest.skip("console script not installed")
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ))
    assert out.returncode == 0 and out.stdout.startswith("capar ")
    assert "snapshot" in run("--help").stdout


def test_psi_snap_files_restore_diff_and_write(priv, tmp_path):
    """A .snap file as PSI's snapshot tool writes it (metadata line, NAME,{"val": ...} lines, the older
    NAME,<value> form, a bare NAME for a PV saved without value) drives `capar diff` and `capar restore`;
    `capar snapshot -o x.snap` writes that format back."""
    P, env = priv.prefix, priv_env(priv)
    snap = tmp_path / "machine.snap"
    snap.write_text(
        '#{"save_time": 1700000000.5, "req_file_name": "machine.req", "labels": ["golden"], "comment": "",'
        ' "machine_params": {}}\n'
        f'{P}ao,{{"val": 2.75, "egu": "mm", "prec": 3}}\n'
        f'{P}longout,{{"val": 42}}\n'
        f'{P}stringout,"from snap"\n'
        f'{P}wf_double,{{"val": [1.0, 2.0, 3.5]}}\n'
        f'{P}wf_string,{{"val": ["x", "y"]}}\n'
        f'{P}bo\n')
    loaded = capar.Snapshot.load(snap)
    assert loaded.created == 1700000000.5 and loaded.ok.tolist() == [True] * 5 + [False]
    assert loaded.ctrl["units"][0] == "mm" and loaded.ctrl["precision"][0] == 3
    before = run("snapshot", *[P + n for n in ("ao", "longout", "stringout", "wf_double", "wf_string")],
                 "-o", tmp_path / "before.json", env=env)
    assert before.returncode == 0, before.stderr
    try:
        d = run("diff", snap, env=env)
        assert d.returncode == 1 and f"changed {P}ao:" in d.stdout, d.stdout + d.stderr
        res = run("restore", snap, "--wait", env=env)
        assert res.returncode == 0, res.stderr
        assert f"{P}bo skipped" in res.stdout
        # only the PV saved without value differs now (failed in the file, connected live)
        assert run("diff", snap, env=env).stdout.strip() == f"missing {P}bo"
        out = run("snapshot", P + "ao", P + "wf_double", P + "nothere", "-o", tmp_path / "back.snap", "-w", "0.5",
                  env=env)
        assert out.returncode == 1 and "nothere: not connected" in out.stderr, out.stderr  # as caget: exit 1
        lines = (tmp_path / "back.snap").read_text().splitlines()
        assert lines[0].startswith('#{"save_time": ') and lines[1] == f'{P}ao,{{"val": 2.75}}'
        assert lines[2] == f'{P}wf_double,{{"val": [1.0, 2.0, 3.5]}}' and lines[3] == f"{P}nothere"
    finally:
        run("restore", tmp_path / "before.json", "--wait", env=env)
