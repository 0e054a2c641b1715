"""``capar get/put/monitor/info`` print what EPICS base's ``caget/caput/camonitor/cainfo`` print.

Two kinds of checks, both against real IOCs:

- exact text derived from the tools' C sources (``modules/ca/src/tools``: ``caget.c``, ``caput.c``,
  ``camonitor.c``, ``cainfo.c``, ``tool_lib.c``; ``epicsTimeToStrftime``, ``epicsStrnEscapedFromRaw`` and
  ``epicsStrnRawFromEscaped`` of libCom) — always run;
- byte-for-byte comparison with the real tools on the same IOC (:func:`test_same_text_as_the_epics_tools`),
  when they are available: ``CAPAR_EPICS_TOOLS=DIR`` (a directory with ``caget``, ``caput``, ``camonitor``
  and ``cainfo``), or the four on ``PATH``; skipped otherwise.  The epicscorelibs wheel ships no tools, but
  they build against it in a second (``tool_lib.c`` plus each tool's ``.c`` from an EPICS base checkout)::

      E=$(python -c "import epicscorelibs.path as p; print(p.base_path)")
      gcc -D_GNU_SOURCE -Dlinux -DUNIX -I. -I$E/include -o caget caget.c tool_lib.c \\
          -L$E/lib -lca -lCom -Wl,-rpath,$E/lib

Writes go to a private IOC of this module only.
"""
from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from capar.testing import IOC, db_all_types, unique_prefix

TIME_RE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}"
EPICS_EPOCH = 631152000


def _record(rtype: str, name: str, **fields: str) -> str:
    body = "".join(f'    field({k}, {v if v.startswith("{") else chr(34) + v + chr(34)})\n'
                   for k, v in fields.items())
    return f'record({rtype}, "{name}") {{\n{body}}}\n'


def _extra(P: str) -> str:
    """Records for the corners of the tools' formats (besides db_all_types)."""
    return "".join([
        _record("ao", P + "nopini", VAL="1.5"),                                   # never processed
        _record("stringout", P + "sdig", VAL="12 ", PINI="YES"),                  # text ending in digits
        _record("mbbo", P + "mbbgap", ZRST="Zero", ONST="One", VAL="5", PINI="YES"),  # no string for 5
        _record("ao", P + "tiny", VAL="1e-7", PREC="4", PINI="YES"),
        _record("ao", P + "big", VAL="123456789.123", PINI="YES"),
        _record("ao", P + "neg", VAL="-2.5", PREC="1", PINI="YES"),
        _record("ao", P + "nanv", VAL="NaN", PINI="YES"),
        _record("waveform", P + "sh1", FTVL="SHORT", NELM="1", INP="{const:[-3]}", PINI="YES"),
        _record("waveform", P + "wfhi", FTVL="UCHAR", NELM="8", INP="{const:[195,169,65,9]}", PINI="YES"),
        _record("waveform", P + "wffl", FTVL="FLOAT", NELM="4", INP="{const:[0.1,2.5,-3]}", PINI="YES"),
    ])


@pytest.fixture(scope="module")
def edge():
    P = unique_prefix("CLIB")
    with IOC(db_all_types(P) + _extra(P), name="cli-base", prefix=P) as ioc:
        yield ioc


def _env(ioc: Optional[IOC] = None, **extra: str) -> dict:
    env = dict(os.environ)
    if ioc is not None:
        env.update(ioc.env)
    env["EPICS_CLI_TIMEOUT"] = "5"  # the tools' default 1 s is tight on a loaded machine
    env.update(extra)
    return env


def capar(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "capar", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or _env())


def out(*args, env=None) -> str:
    r = capar(*args, env=env)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def lines_of(proc: subprocess.Popen) -> "queue.Queue[str]":
    """The lines a process prints, from a reader thread (so that a test can wait with a timeout); ""
    at the end of its output."""
    q: "queue.Queue[str]" = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            q.put(line)
        q.put("")

    threading.Thread(target=read, daemon=True).start()
    return q


def finish(proc: subprocess.Popen, lines: "Optional[queue.Queue[str]]" = None) -> str:
    """Kill *proc* if it still runs, wait for it, drain its reader thread, close its pipes; its stderr."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=20)
    while lines is not None and lines.get(timeout=20) != "":
        pass
    err = proc.stderr.read() if proc.stderr else ""
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()
    return err


def pad(name: str) -> str:
    return "%-30s" % name


def stamp_of(name: str, env: dict) -> str:
    """The record's time stamp as the tools print it, computed here from (secs, nsec): local time,
    microseconds = (nsec + 500) // 1000 (never 1000000), '<undefined>' for the EPICS epoch."""
    code = ("import capar, sys; from capar import ca\n"
            "ch = ca.create_channel(sys.argv[1]); ca.connect_channel(ch, timeout=5)\n"
            "md = ca.get_with_metadata(ch, ftype=ca.promote_type(ch, use_time=True), timeout=5)\n"
            "print(md['posixseconds'], md['nanoseconds'])\n")
    r = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    secs, nsec = map(int, r.stdout.split())
    if secs == EPICS_EPOCH and nsec == 0:
        return "<undefined>"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs)) + ".%06d" % (min(nsec + 500, 999999999)
                                                                                 // 1000)


# --------------------------------------------------------------------------------------------------
# caget

def test_get_formats(edge):
    P, env = edge.prefix, _env(edge)
    assert out("get", P + "ao", P + "mbbo", P + "wf_long", P + "wf_string", P + "stringin", env=env) == (
        f"{pad(P + 'ao')} 3.5\n{pad(P + 'mbbo')} Two\n{P}wf_long 16 1 2 3 4 5 0 0 0 0 0 0 0 0 0 0 0\n"
        f"{P}wf_string 16 a bb ccc" + " " * 13 + f"\n{pad(P + 'stringin')} world\n")
    # ENUM read as DBR_STRING: a state without a string is the server's empty text; -n: DBR_INT, so -0x applies
    assert out("get", P + "mbbgap", env=env) == pad(P + "mbbgap") + " \n"
    assert out("get", "-n", "-0x", P + "mbbo", env=env) == pad(P + "mbbo") + " 0x2\n"
    assert out("get", "-t", "-n", P + "mbbo", P + "bo", env=env) == "2\n1\n"
    assert out("get", "-0x", P + "sh1", P + "longin", env=env) == f"{pad(P + 'sh1')} 0xFFFFFFFD\n" \
                                                                    f"{pad(P + 'longin')} 0xFFFFFFF9\n"
    assert out("get", "-0b", P + "longout", env=env) == pad(P + "longout") + " 101010\n"
    assert out("get", "-0o", P + "longout", env=env) == pad(P + "longout") + " 0o52\n"
    # -lx: (long)(x ± 0.5); NaN gives INT_MIN as the tools on x86
    assert out("get", "-lx", P + "neg", P + "nanv", P + "big", env=env) == (
        f"{pad(P + 'neg')} 0xFFFFFFFD\n{pad(P + 'nanv')} 0x80000000\n{pad(P + 'big')} 0x75BCD15\n")
    assert out("get", "-lb", P + "ao", env=env) == pad(P + "ao") + " 100\n"
    assert out("get", P + "tiny", P + "big", P + "nanv", P + "wffl", env=env) == (
        f"{pad(P + 'tiny')} 1e-07\n{pad(P + 'big')} 1.23457e+08\n{pad(P + 'nanv')} nan\n{P}wffl 4 0.1 2.5 -3 0\n")
    assert out("get", "-f", "18", P + "ao", env=env) == pad(P + "ao") + " 3.500000000000000000\n"
    assert out("get", "-e3", P + "tiny", env=env) == pad(P + "tiny") + " 1.000e-07\n"
    assert out("get", "-g", "10", P + "big", env=env) == pad(P + "big") + " 123456789.1\n"
    assert out("get", "-s", P + "tiny", P + "neg", P + "wffl", env=env) == (  # the server's PREC
        f"{pad(P + 'tiny')} 0.0000\n{pad(P + 'neg')} -2.5\n{P}wffl 4 0 3 -3 \n")  # past NORD: ''
    assert out("get", "-F", ",", "-#", "2", P + "wf_long", P + "ao", env=env) == f"{P}wf_long,2,1,2\n{P}ao,1,3.5\n"
    assert out("get", "-c", "-t", P + "wf_empty", P + "wf_long", env=env) == "\n5 1 2 3 4 5\n"
    assert out("get", "-c", P + "wf_empty", env=env) == pad(P + "wf_empty") + " \n"
    # -S: the bytes up to the first NUL, C escapes and \xNN for every byte that is not printable ASCII
    assert out("get", "-S", P + "wfhi", P + "wf_char", env=env) == (
        f"{P}wfhi \\xc3\\xa9A\\t\n{P}wf_char \\x01\\x02\\x03\\x04\\x05\n")
    assert out("get", "-S", "-#", "3", "-t", P + "wf_text", env=env) == "Hel\n"
    assert out("get", P + "wfhi", env=env) == f"{P}wfhi 8 -61 -87 65 9 0 0 0 0\n"    # DBR_CHAR is printed signed


def test_get_wide_and_time_stamps(edge):
    P, env = edge.prefix, _env(edge)
    ao, sdig, nopini = stamp_of(P + "ao", env), stamp_of(P + "sdig", env), stamp_of(P + "nopini", env)
    assert nopini == "<undefined>"
    text = out("get", "-a", P + "ao", P + "calc_alarm", P + "sdig", P + "wf_long", env=env).splitlines()
    assert text[0] == f"{pad(P + 'ao')} {ao} 3.5  "
    assert re.fullmatch(rf"{re.escape(pad(P + 'calc_alarm'))} {TIME_RE} 20 HIHI MAJOR", text[1]), text
    assert text[2] == f"{pad(P + 'sdig')} {sdig} 12   "                   # the value '12 ', then two separators
    assert re.fullmatch(rf"{re.escape(P)}wf_long {TIME_RE} 16 1 2 3 4 5( 0){{11}}  ", text[3]), text
    assert re.fullmatch(rf"{re.escape(pad(P + 'nopini'))} <undefined> 1\.5 UDF \S+", out(
        "get", "-a", P + "nopini", env=env).rstrip("\n"))
    assert out("get", "-a", "-c", P + "wf_empty", env=env).rstrip("\n").endswith(" " + stamp_of(
        P + "wf_empty", env) + "  ")                                          # no count, no values
    assert out("get", "-a", "-F", ",", P + "ao", env=env) == f"{P}ao,{ao},3.5,,\n"
    d = out("get", "-d", "TIME_DOUBLE", P + "ao", env=env).splitlines()
    assert d[5] == f"    Timestamp:        {ao}"


def test_get_dbr_types(edge):
    P, env = edge.prefix, _env(edge)
    assert out("get", "-d", "CTRL_ENUM", P + "mbbgap", env=env) == (
        f"{P}mbbgap\n    Native data type: DBF_ENUM\n    Request type:     DBR_CTRL_ENUM\n"
        "    Element count:    1\n    Value:            Enum Index Overflow (5)\n"
        "    Status:           NO_ALARM\n    Severity:         NO_ALARM\n    Enums:            ( 2)\n"
        "                      [ 0] Zero\n                      [ 1] One\n")
    assert out("get", "-d", "ENUM", P + "mbbo", env=env).splitlines()[4] == "    Value:            2"
    assert out("get", "-d", "STS_STRING", "-#", "2", P + "wf_long", env=env) == (
        f"{P}wf_long\n    Native data type: DBF_LONG\n    Request type:     DBR_STS_STRING\n"
        "    Element count:    2\n    Value:            1 2\n    Status:           NO_ALARM\n"
        "    Severity:         NO_ALARM\n")
    assert out("get", "-d", "GR_LONG", P + "longout", env=env) == (
        f"{P}longout\n    Native data type: DBF_LONG\n    Request type:     DBR_GR_LONG\n"
        "    Element count:    1\n    Value:            42\n    Status:           NO_ALARM\n"
        "    Severity:         NO_ALARM\n    Units:            cts\n    Lo disp limit:       -1000\n"
        "    Hi disp limit:        1000\n    Lo alarm limit:          0\n    Lo warn limit:           0\n"
        "    Hi warn limit:           0\n    Hi alarm limit:          0\n")
    assert out("get", "-d", "TIME_STRING", P + "nopini", env=env).splitlines()[5:] == [
        "    Timestamp:        <undefined>", "    Status:           UDF",
        f"    Severity:         {out('get', '-d', 'STS_DOUBLE', P + 'nopini', env=env).splitlines()[-1].split()[-1]}"]
    both = capar("get", "-t", "-a", P + "ao", env=env)
    assert both.returncode == 0 and "mutually exclusive" in both.stderr


# --------------------------------------------------------------------------------------------------
# caput

def test_put_text_and_escapes(edge):
    P, env = edge.prefix, _env(edge)

    def put(*args):
        return out("put", *args, env=env)

    assert put(P + "ao", "4.25") == f"Old : {pad(P + 'ao')} 3.5\nNew : {pad(P + 'ao')} 4.25\n"
    assert put("-t", P + "ao", "-2.5e0") == "-2.5\n"                   # after the PV name: values, not options
    assert put("-c", "-t", P + "ao", "3.5") == "3.5\n"
    assert put(P + "mbbo", "One") == f"Old : {pad(P + 'mbbo')} Two\nNew : {pad(P + 'mbbo')} One\n"
    assert put("-n", P + "mbbo", "2") == f"Old : {pad(P + 'mbbo')} 1\nNew : {pad(P + 'mbbo')} 2\n"
    assert put("-F", ",", "-a", P + "wf_long", "2", "7", "8") == (
        f"Old : {P}wf_long,16,1,2,3,4,5,0,0,0,0,0,0,0,0,0,0,0\nNew : {P}wf_long,16,7,8" + ",0" * 14 + "\n")
    # epicsStrnRawFromEscaped: \xH / \xHH, \0, other escaped characters stand for themselves, no octal
    assert put("-S", "-t", P + "wf_text", "a\\x41\\xg\\q\\x4") == "aAgq\\x04\n"
    assert put("-S", "-t", P + "wf_text", "caf\\xc3\\xa9 \\t\\\"") == "caf\\xc3\\xa9 \\t\\\"\n"
    assert put("-S", "-t", P + "wf_text", "ab\\001") == "ab\n"            # \0 ends the text
    assert put("-t", P + "wf_char", "65") == "16 65 " + " ".join(["0"] * 15) + "\n"  # a number: element 0
    assert put("-t", P + "stringout", "x" * 45) == "x" * 39 + "\n"         # caput's 40-byte EpicsStr
    assert put("-t", P + "stringout", "tab\\there") == "tab\\there\n"
    long = put("-l", P + "longout", "5").splitlines()
    assert re.fullmatch(rf"Old : {re.escape(pad(P + 'longout'))} {TIME_RE} 42  ", long[0]), long
    assert long[1] == f"New : {pad(P + 'longout')} {stamp_of(P + 'longout', env)} 5  "
    nothing = capar("put", P + "ao", env=env)
    assert nothing.returncode == 1 and nothing.stderr == "No value specified. ('caput -h' for help.)\n"  # caput's


# --------------------------------------------------------------------------------------------------
# camonitor

def test_monitor_formats(edge):
    P, env = edge.prefix, _env(edge)
    ao = stamp_of(P + "ao", env)

    def mon(*args):
        return out("monitor", *args, env=env)

    assert mon("--count", "1", P + "ao") == f"{pad(P + 'ao')} {ao} {_ao_value(P, env)}  \n"
    assert mon("--count", "1", "-s", "-f", "5", P + "neg") == f"{pad(P + 'neg')} " \
                                                            f"{stamp_of(P + 'neg', env)} -2.5  \n"
    assert mon("--count", "1", "-t", "n", "-#", "2", P + "wf_short") == f"{P}wf_short  2 1 2  \n"
    client = mon("--count", "1", "-t", "sc", "-S", P + "wf_text").rstrip("\n")
    assert re.fullmatch(rf"{re.escape(P)}wf_text {re.escape(stamp_of(P + 'wf_text', env))}\({TIME_RE}\) "
                        r"\S.*  ", client), client
    assert mon("--count", "1", P + "nopini") == f"{pad(P + 'nopini')} <undefined> 1.5 UDF " \
        f"{out('get', '-d', 'STS_DOUBLE', P + 'nopini', env=env).splitlines()[-1].split()[-1]}\n"
    rel = mon("--count", "4", "-t", "sr", P + "counter", P + "ao").splitlines()
    assert len(rel) == 4 and sum(bool(re.search(TIME_RE, ln)) for ln in rel) == 2, rel  # first of each PV
    assert all(re.fullmatch(r"\S+ +\s{14}\s*[+-]\d+\.\d{6} \d+  ", ln) for ln in rel if not re.search(TIME_RE, ln))
    warn = capar("monitor", "--count", "1", "-t", "sx", P + "ao", env=env)
    assert warn.returncode == 0 and "Invalid argument 'x' for option '-t' - ignored." in warn.stderr


def _ao_value(P, env):
    return out("get", "-t", P + "ao", env=env).strip()


def test_monitor_reports_a_disconnection():
    P = unique_prefix("CLID")
    ioc = IOC(_record("ao", P + "x", VAL="2", PINI="YES"), name="cli-disconnect", prefix=P).start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "capar", "monitor", P + "x"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env(ioc))
        lines = lines_of(proc)
        try:
            first = lines.get(timeout=30)
            assert re.fullmatch(rf"{re.escape(pad(P + 'x'))} {TIME_RE} 2  \n", first), first
            ioc.stop()  # the server goes away: camonitor's "*** disconnected" line, with the local time
            gone = lines.get(timeout=30)
            assert re.fullmatch(rf"{re.escape(pad(P + 'x'))} {TIME_RE} \*\*\* disconnected\n", gone), gone
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=20)
        finally:
            err = finish(proc, lines)
    finally:
        ioc.stop()
    assert proc.returncode == 130 and "Traceback" not in err, err


# --------------------------------------------------------------------------------------------------
# cainfo, timeouts

def test_info_and_timeouts(edge):
    P, env = edge.prefix, _env(edge)
    block = out("info", "-s", "0", P + "wf_text", env=env)
    host = block.split("Host:")[1].split()[0]
    assert block == (f"{P}wf_text\n    State:            connected\n    Host:             {host}\n"
                     "    Access:           read, write\n    Native data type: DBF_CHAR\n"
                     "    Request type:     DBR_CHAR\n    Element count:    64\n")
    status = capar("info", "-s", "2", P + "ao", env=env)
    assert status.returncode == 0 and "Channel Access Client Context" in status.stdout + status.stderr
    bad = capar("get", "-w", "5", P + "ao", env=_env(edge, EPICS_CLI_TIMEOUT="soon"))
    assert bad.returncode == 0 and bad.stderr.startswith("'soon' is not a valid timeout value")
    assert "EPICS_CLI_TIMEOUT or 1" in capar("monitor", "-h").stdout


# --------------------------------------------------------------------------------------------------
# the real tools, when available

CASES = """
caget $Pao $Pai $Pbo $Pbi $Pmbbo $Pmbbi $Plongout $Plongin $Pstringout $Pstringin $Plsi $Pint64in $Pint64out
caget $Pwf_char $Pwf_uchar $Pwf_short $Pwf_ushort $Pwf_long $Pwf_ulong $Pwf_float $Pwf_double $Pwf_string $Pwf_empty
caget -c $Pwf_char $Pwf_short $Pwf_long $Pwf_float $Pwf_double $Pwf_string $Pwf_text $Pwf_empty
caget -t -c $Pwf_long $Pwf_empty $Pmbbo
caget -n -0x $Pmbbo $Pbo
caget -# 3 $Pwf_long $Pao $Pwf_string
caget -F, $Pao $Pwf_long $Pmbbo
caget -f3 $Pao $Pwf_double $Ptiny $Pbig $Pnanv
caget -e 2 $Pao $Ptiny
caget -g 10 $Pbig
caget -s $Pao $Pai $Ptiny $Pneg $Pwf_double $Pwf_float $Pcalc_alarm
caget -0x $Plongin $Plongout $Psh1 $Pwf_short $Pwf_char
caget -0b $Plongin $Plongout $Psh1
caget -lx $Pao $Pneg $Pbig $Pnanv $Pwf_double
caget $Ptiny $Pbig $Pneg $Psh1 $Pwffl $Pwfhi $Psdig $Pmbbgap
caget -S $Pwf_text $Pwf_char $Pwfhi
caget -S -# 3 $Pwf_text
caget -d CTRL_DOUBLE $Pao
caget -d 20 $Pcalc_alarm
caget -d GR_ENUM $Pmbbi
caget -d CTRL_ENUM $Pmbbgap
caget -d STRING $Pmbbi $Pao
caget -d CTRL_LONG $Plongout
caget -d CTRL_CHAR $Pwf_char
caget -d CTRL_FLOAT $Pwffl
caget -d TIME_STRING $Pnopini
caget -a $Pao $Pcalc_alarm $Pmbbo $Pwf_long $Pstringin $Pwf_empty $Pnopini $Psdig
caget -a -c $Pwf_long $Pwf_empty
caget -a -S -F, $Pwf_text $Pao
camonitor 3 $Pao $Pmbbo $Pwf_long
camonitor 2 -n -t n $Pmbbo $Pbo
camonitor 2 -S -# 3 $Pwf_text $Pwfhi
camonitor 2 -s $Pao $Pwf_double
caput $Pao 4.25
caput -l $Pao 3.5
caput -t $Pmbbo One
caput -n $Pmbbo 2
caput -a $Pwf_string 2 x yy
caput -S $Pwf_text 'a\\x41\\xg\\q'
caput $Pstringout 'tab\\there'
cainfo $Pao $Pwf_long $Pmbbo
"""


def _tools() -> Optional[Path]:
    d = os.environ.get("CAPAR_EPICS_TOOLS")
    if d:
        return Path(d)
    found = shutil.which("caget")
    if found and all(shutil.which(t) for t in ("caput", "camonitor", "cainfo")):
        return Path(found).parent
    return None


def _first_lines(argv: list[str], n: int, env: dict) -> str:
    """The first *n* lines camonitor prints (it runs until stopped)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    lines = lines_of(proc)
    try:
        return "".join(lines.get(timeout=30) for _ in range(n))
    finally:
        finish(proc, lines)


def test_same_text_as_the_epics_tools(edge):
    tools = _tools()
    if tools is None:
        pytest.skip("EPICS base tools not available (set CAPAR_EPICS_TOOLS=DIR)")
    P, env = edge.prefix, _env(edge)
    stamp = re.compile(TIME_RE)
    failures = []
    for line in CASES.strip().splitlines():
        tool, *args = shlex.split(line.replace("$P", P))
        cmd = {"caget": "get", "caput": "put", "camonitor": "monitor", "cainfo": "info"}[tool]
        if tool == "camonitor":
            n = int(args.pop(0))
            ref = _first_lines([str(tools / tool), *args], n, env)
            mine = capar(cmd, "--count", n, *args, env=env).stdout
        else:
            if tool == "caput":  # the same value first, so that "Old" is the same for both
                subprocess.run([str(tools / tool), *args], capture_output=True, timeout=30, env=env)
            ref = subprocess.run([str(tools / tool), *args], capture_output=True, text=True, timeout=30,
                                 env=env).stdout
            mine = capar(cmd, *args, env=env).stdout
        if tool in ("caput", "camonitor"):  # processing times differ between the two runs
            ref, mine = stamp.sub("<time>", ref), stamp.sub("<time>", mine)
        if ref != mine:
            failures.append(f"{line}\n  {tool}: {ref!r}\n  capar: {mine!r}")
    capar("put", P + "ao", "3.5", env=env)
    assert not failures, "\n".join(failures)
