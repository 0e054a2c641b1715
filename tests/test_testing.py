"""Tests of capar.testing: the loopback-only test IOC and the record generators.

Record values are read *inside* the IOC process (``IOC.dbgf``), so these tests do not depend on
capar's CA client.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import capar
import capar.testing as testing
from capar.testing import (
    IOC, db_all_types, db_counters, db_scalars, db_waveforms, free_port, loopback_env,
    unique_prefix,
)

pytestmark = pytest.mark.timeout(90)

LOOPBACK = "127.0.0.1"


# -- helpers -----------------------------------------------------------------------------------------

def dbf_type(out: str) -> str:
    """``"DBF_DOUBLE[5]"`` -> ``"DBF_DOUBLE"``."""
    return out.partition(":")[0].partition("[")[0].strip()


def dbf_strings(out: str) -> list[str]:
    """Quoted strings of a ``dbgf`` answer (long strings printed as ``"..." + "..."`` are joined)."""
    body = out.partition(":")[2]
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', body)
    if re.search(r'"\s*\+\s*"', body):
        return ["".join(parts)]
    return parts


def dbf_string(out: str) -> str:
    (value,) = dbf_strings(out)
    return value


def dbf_numbers(out: str) -> list[float]:
    """Numbers of a numeric ``dbgf`` answer (``42 = 0x2a`` -> 42)."""
    body = out.partition(":")[2]
    tokens = body.split()
    values, skip = [], False
    for tok in tokens:
        if skip:
            skip = False
            continue
        if tok == "=":
            skip = True
            continue
        values.append(float(tok))
    return values


def dbf_number(out: str) -> float:
    (value,) = dbf_numbers(out)
    return value


def pid_alive(pid: int, create_time: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 0.01
    except psutil.NoSuchProcess:
        return False


def ctime(pid: int) -> float:
    return psutil.Process(pid).create_time()


# -- ports, prefixes, environment ---------------------------------------------------------------------

def test_free_port_is_free_for_tcp_and_udp() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    for port in list(ports)[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((LOOPBACK, port))
            udp.bind((LOOPBACK, port))


def test_unique_prefix() -> None:
    prefixes = [unique_prefix() for _ in range(200)]
    assert len(set(prefixes)) == 200
    assert all(re.fullmatch(r"T[0-9a-f]{6}:", p) for p in prefixes)
    assert re.fullmatch(r"XY[0-9a-f]{6}:", unique_prefix("XY"))


def test_loopback_env_exact() -> None:
    env = loopback_env(5555, 5556, 1234)
    assert env == {
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_SERVER_PORT": "5555",
        "EPICS_CA_SERVER_PORT": "5555",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_ADDR_LIST": "127.0.0.1:5555",
        "EPICS_CA_REPEATER_PORT": "5556",
        "EPICS_CA_MAX_ARRAY_BYTES": "1234",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
    }
    assert loopback_env(1, 2)["EPICS_CA_MAX_ARRAY_BYTES"] == "20000000"


def test_apply_env(ioc: IOC) -> None:
    environ = {"EPICS_CA_NAME_SERVERS": "10.0.0.1:5064", "OTHER": "x"}
    ioc.apply_env(environ)
    assert environ == {**ioc.env, "OTHER": "x"}
    for key, value in ioc.env.items():  # the session fixture applied it to os.environ
        assert os.environ[key] == value


def test_import_does_not_load_epics_libraries() -> None:
    code = textwrap.dedent("""
        import sys
        import capar
        before = set(sys.modules)
        import capar.testing
        maps = open("/proc/self/maps").read()
        bad = [m for m in ("libca.so", "libCom.so", "libdbCore.so") if m in maps]
        # whatever the package's __init__ imports, capar.testing itself adds no CA/IOC module
        mods = [m for m in set(sys.modules) - before
                if m.startswith(("epicscorelibs.ca", "epicscorelibs.ioc", "capar.ca"))]
        print(bad, mods)
        sys.exit(1 if bad or mods else 0)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# -- process lifecycle -----------------------------------------------------------------------------------

def test_start_stop_pids_gone() -> None:
    P = unique_prefix()
    ioc = IOC(db_scalars(P, 3), name="lifecycle")
    assert not ioc.running and ioc.pid is None
    with ioc:
        assert ioc.running
        pid, rep = ioc.pid, ioc.repeater
        assert pid is not None and rep is not None and rep.poll() is None
        ioc_ct, rep_ct = ctime(pid), ctime(rep.pid)
        assert pid_alive(pid, ioc_ct) and pid_alive(rep.pid, rep_ct)
        workdir = os.path.dirname(ioc.db_path)
        assert os.path.isfile(ioc.db_path)
        # the repeater holds its UDP port
        assert any(c.laddr.port == ioc.repeater_port
                   for c in psutil.Process(rep.pid).net_connections(kind="udp"))
        assert dbf_number(ioc.dbgf(P + "s2")) == 2.0
    assert not ioc.running and ioc.pid is None and ioc.process is None and ioc.repeater is None
    assert not pid_alive(pid, ioc_ct)
    assert not pid_alive(rep.pid, rep_ct)
    assert not os.path.exists(workdir)
    ioc.stop()  # idempotent
    assert pid not in [c.pid for c in psutil.Process().children(recursive=True)]


def test_listens_only_on_loopback(ioc: IOC) -> None:
    """Every TCP listener and every UDP socket on a CA port of the IOC is bound to 127.0.0.1.

    The only sockets bound to 0.0.0.0 are libca's unconfigurable client UDP sockets on ephemeral
    ports (rsrv's beacon sender and dbCa's search socket): they only send to the address lists,
    which are 127.0.0.1.
    """
    assert ioc.pid is not None
    conns = psutil.Process(ioc.pid).net_connections(kind="inet")
    listeners = [c for c in conns if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN]
    assert listeners and all(c.laddr.ip == LOOPBACK for c in listeners), listeners
    assert {c.laddr.port for c in listeners} == {ioc.port}
    udp = [c for c in conns if c.type == socket.SOCK_DGRAM]
    on_ca_port = [c for c in udp if c.laddr.port == ioc.port]
    assert on_ca_port and all(c.laddr.ip == LOOPBACK for c in on_ca_port), udp
    for c in udp:
        assert c.laddr.ip in (LOOPBACK, "0.0.0.0"), c
        if c.laddr.ip == "0.0.0.0":
            assert c.laddr.port not in (ioc.port, ioc.repeater_port, 5064, 5065), c
    for c in conns:  # nothing connected anywhere but loopback
        if c.raddr:
            assert c.raddr.ip == LOOPBACK, c
    assert all(c.family == socket.AF_INET for c in conns), conns


def test_restart_keeps_port(prefix: str) -> None:
    P = unique_prefix()
    with IOC(db_scalars(P, 2) + db_waveforms(P, 2, 1000), name="restart") as ioc:
        port, rep_port, rep = ioc.port, ioc.repeater_port, ioc.repeater
        old_pid = ioc.pid
        assert old_pid is not None and rep is not None
        old_ct = ctime(old_pid)
        ioc.dbpf(P + "s1", "7.5")
        assert dbf_number(ioc.dbgf(P + "s1")) == 7.5
        ioc.restart()
        assert ioc.running and ioc.port == port and ioc.repeater_port == rep_port
        assert ioc.repeater is rep and rep.poll() is None
        assert ioc.pid != old_pid or not pid_alive(old_pid, old_ct)
        assert not pid_alive(old_pid, old_ct)
        assert dbf_number(ioc.dbgf(P + "s1")) == 1.0  # fresh IOC, initial value again
        assert dbf_number(ioc.dbgf(P + "w1.NORD")) == 1000
        with socket.create_connection((LOOPBACK, port), timeout=2):
            pass
        ioc.restart()
        assert ioc.running and ioc.port == port


def test_bad_database_fails_loudly() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ioc = IOC('record(ao, "x:bad") {\n    field(FOO, "1")\n}\n', name="bad", startup_timeout=30)
    with pytest.raises(RuntimeError, match="FOO"):
        ioc.start()
    assert not ioc.running and ioc.repeater is None
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before


def test_bad_link_value_fails_loudly() -> None:
    ioc = IOC('record(waveform, "x:bad") {\n    field(FTVL, "DOUBLE")\n    field(NELM, "4")\n'
              '    field(INP, {const:[1,2,)\n}\n', name="badlink", startup_timeout=30)
    with pytest.raises(RuntimeError):
        ioc.start()
    assert not ioc.running


def test_init_errors_fail_loudly() -> None:
    """Errors printed during iocInit (here: I/O Intr scan without device support) fail start()."""
    ioc = IOC(db_counters(unique_prefix(), 1, scan="I/O Intr"), name="initerr", startup_timeout=30)
    with pytest.raises(RuntimeError, match="I/O Intr"):
        ioc.start()
    assert not ioc.running


def test_ioc_works_without_repeater(monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(testing, "_REPEATER_SCRIPT", "import sys; sys.exit(7)")
    P = unique_prefix()
    with caplog.at_level(logging.WARNING, logger="capar.testing"):
        with IOC(db_scalars(P, 1), name="norep") as ioc:
            assert ioc.repeater is None
            assert dbf_number(ioc.dbgf(P + "s0")) == 0.0
            before = {p.pid for p in psutil.Process(ioc.pid).children(recursive=True)}
            assert before == set()  # the IOC did not spawn a caRepeater of its own
    assert any("repeater" in r.getMessage() for r in caplog.records)


def _run_child(code: str) -> tuple[list[int], subprocess.CompletedProcess]:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=60)
    pids = [int(x) for x in re.findall(r"PIDS (\d+) (\d+)", res.stdout)[0]]
    return pids, res


@pytest.mark.parametrize("how", ["atexit", "hard_exit"])
def test_ioc_dies_with_its_parent(how: str) -> None:
    """atexit stops IOCs left running; a parent dying without atexit leaves nothing either (stdin EOF)."""
    exit_call = "pass" if how == "atexit" else "os._exit(0)"
    pids, res = _run_child(f"""
        import os, sys
        from capar.testing import IOC, db_scalars
        ioc = IOC(db_scalars("X:", 1)).start()
        print("PIDS", ioc.pid, ioc.repeater.pid, flush=True)
        print("WORKDIR", os.path.dirname(ioc.db_path), flush=True)
        {exit_call}
    """)
    workdir = res.stdout.split("WORKDIR ")[1].strip()
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
              for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    deadline = time.monotonic() + 5
    while os.path.exists(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(workdir)


def test_shell_and_dbpf(ioc: IOC, prefix: str) -> None:
    text = "x" * 200
    ioc.dbpf(prefix + "lso", text)
    assert dbf_string(ioc.dbgf(prefix + "lso.VAL$")) == text
    with pytest.raises(ValueError):
        ioc.shell("dbgf a\ndbgf b")
    out = ioc.shell(f"dbpr {prefix}ao 1")
    assert "EGU" in out and "mm" in out
    assert "not found" in ioc.dbgf(prefix + "no_such_record").lower() or \
        ioc.dbgf(prefix + "no_such_record") == ""


# -- record values ------------------------------------------------------------------------------------

SCALARS = {
    # name suffix: (dbgf type, value)
    "ao": ("DBF_DOUBLE", 3.5),
    "ai": ("DBF_DOUBLE", 1.25),
    "longout": ("DBF_LONG", 42),
    "longin": ("DBF_LONG", -7),
    "int64in": ("DBF_INT64", 2**40 + 1),
    "int64out": ("DBF_INT64", -(2**33)),
    "calc_alarm": ("DBF_DOUBLE", 20.0),
}
STRINGS = {
    "bo": "On", "bi": "Closed", "mbbo": "Two", "mbbi": "B",
    "stringout": "hello", "stringin": "world",
}
FIELDS = {
    "ao.EGU": "mm", "ao.PREC": 3, "ao.HOPR": 10, "ao.LOPR": -10, "ao.DRVH": 9, "ao.DRVL": -9,
    "ao.HIHI": 8, "ao.HIGH": 6, "ao.LOW": -6, "ao.LOLO": -8, "ao.HHSV": "MAJOR", "ao.HSV": "MINOR",
    "ao.LSV": "MINOR", "ao.LLSV": "MAJOR",
    "ai.EGU": "V", "ai.PREC": 2, "ai.HOPR": 100, "ai.LOPR": 0,
    "bo.ZNAM": "Off", "bo.ONAM": "On", "bo.RVAL": 1, "bi.ZNAM": "Closed", "bi.ONAM": "Open",
    "mbbo.ZRST": "Zero", "mbbo.ONST": "One", "mbbo.TWST": "Two", "mbbo.THST": "Three",
    "mbbi.ZRST": "A", "mbbi.ONST": "B", "mbbi.TWST": "C", "mbbi.THST": "D",
    "longout.EGU": "cts", "longout.HOPR": 1000, "longout.LOPR": -1000,
    "lsi.SIZV": 256, "lsi.LEN": 101, "lso.SIZV": 256,
    "calc_alarm.HIHI": 10, "calc_alarm.HHSV": "MAJOR", "calc_alarm.SEVR": "MAJOR",
    "calc_alarm.STAT": "HIHI",
    "counter.SCAN": ".1 second", "counter.CALC": "A+1",
    "wf_text.NORD": 12, "wf_text.NELM": 64, "wf_text.FTVL": "CHAR",
    "wf_empty.NORD": 0, "wf_empty.NELM": 10, "wf_empty.FTVL": "DOUBLE",
    "wf_big.NELM": 200000, "wf_big.NORD": 200000, "wf_big.FTVL": "DOUBLE",
}
NUMERIC_WAVEFORMS = ["CHAR", "UCHAR", "SHORT", "USHORT", "LONG", "ULONG", "INT64", "UINT64",
                     "FLOAT", "DOUBLE"]


def _check_field(ioc: IOC, name: str, expected: object) -> None:
    out = ioc.dbgf(name)
    if isinstance(expected, str):
        assert dbf_string(out) == expected, out
    else:
        assert dbf_number(out) == expected, out


@pytest.mark.parametrize("suffix", sorted(SCALARS))
def test_all_types_scalars(ioc: IOC, prefix: str, suffix: str) -> None:
    dbf, value = SCALARS[suffix]
    out = ioc.dbgf(prefix + suffix)
    assert dbf_type(out) == dbf, out
    assert dbf_number(out) == value, out


@pytest.mark.parametrize("suffix", sorted(STRINGS))
def test_all_types_strings(ioc: IOC, prefix: str, suffix: str) -> None:
    assert dbf_string(ioc.dbgf(prefix + suffix)) == STRINGS[suffix]


def test_all_types_enum_raw_values(ioc: IOC, prefix: str) -> None:
    # dbgf shows enums as their state strings (checked above); the bo's raw value is visible too.
    assert dbf_number(ioc.dbgf(prefix + "bo.RVAL")) == 1


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_all_types_fields(ioc: IOC, prefix: str, field: str) -> None:
    _check_field(ioc, prefix + field, FIELDS[field])


def test_all_types_long_strings(ioc: IOC, prefix: str) -> None:
    assert dbf_string(ioc.dbgf(prefix + "lsi.VAL$")) == "L" * 100
    assert dbf_type(ioc.dbgf(prefix + "lso")) == "DBF_STRING"


@pytest.mark.parametrize("ftvl", NUMERIC_WAVEFORMS)
def test_all_types_numeric_waveforms(ioc: IOC, prefix: str, ftvl: str) -> None:
    name = prefix + "wf_" + ftvl.lower()
    out = ioc.dbgf(name)
    assert dbf_type(out) == "DBF_" + ftvl, out
    if ftvl == "CHAR":  # dbgf prints char arrays as escaped text
        assert dbf_string(out) == "\\x01\\x02\\x03\\x04\\x05", out
    else:
        assert dbf_numbers(out) == [1, 2, 3, 4, 5], out
    assert dbf_number(ioc.dbgf(name + ".NORD")) == 5
    assert dbf_number(ioc.dbgf(name + ".NELM")) == 16
    assert dbf_string(ioc.dbgf(name + ".SEVR")) == "NO_ALARM"


def test_all_types_string_waveform(ioc: IOC, prefix: str) -> None:
    out = ioc.dbgf(prefix + "wf_string")
    assert dbf_type(out) == "DBF_STRING" and dbf_strings(out) == ["a", "bb", "ccc"], out
    assert dbf_number(ioc.dbgf(prefix + "wf_string.NORD")) == 3
    assert dbf_number(ioc.dbgf(prefix + "wf_string.NELM")) == 16


def test_all_types_text_and_big(ioc: IOC, prefix: str) -> None:
    assert dbf_string(ioc.dbgf(prefix + "wf_text")) == "Hello EPICS"
    assert dbf_numbers(ioc.dbgf(prefix + "wf_big")) == [0.0] * 100  # dbgf shows 100 elements


def test_all_types_no_alarm(ioc: IOC, prefix: str) -> None:
    names = (list(SCALARS) + list(STRINGS) + ["lsi", "lso", "wf_text", "wf_empty", "wf_big",
                                              "wf_string", "counter"])
    for suffix in names:
        sevr = dbf_string(ioc.dbgf(prefix + suffix + ".SEVR"))
        assert sevr == ("MAJOR" if suffix == "calc_alarm" else "NO_ALARM"), suffix


def test_counter_counts_at_10hz(ioc: IOC, prefix: str) -> None:
    first = dbf_number(ioc.dbgf(prefix + "counter"))
    time.sleep(1.0)
    second = dbf_number(ioc.dbgf(prefix + "counter"))
    assert 5 <= second - first <= 15


def test_session_scalars_and_counters(ioc: IOC, prefix: str) -> None:
    for i in (0, 1, 999, 1999):
        assert dbf_number(ioc.dbgf(f"{prefix}s{i}")) == float(i)
        assert dbf_number(ioc.dbgf(f"{prefix}s{i}.PREC")) == 2
        assert dbf_string(ioc.dbgf(f"{prefix}s{i}.EGU")) == "u"
        assert dbf_string(ioc.dbgf(f"{prefix}s{i}.SEVR")) == "NO_ALARM"
    assert "not found" in ioc.dbgf(f"{prefix}s2000").lower()
    before = [dbf_number(ioc.dbgf(f"{prefix}c{i}")) for i in (0, 19)]
    time.sleep(0.5)
    after = [dbf_number(ioc.dbgf(f"{prefix}c{i}")) for i in (0, 19)]
    assert all(a > b for a, b in zip(after, before))
    assert dbf_string(ioc.dbgf(f"{prefix}c0.INPA")).startswith(f"{prefix}c0 NPP")
    assert "not found" in ioc.dbgf(f"{prefix}c20").lower()


def test_generators_text() -> None:
    assert db_scalars("P:", 2, start=5).count("record(ao") == 2
    assert '"P:s5"' in db_scalars("P:", 2, start=5) and '"P:s6"' in db_scalars("P:", 2, start=5)
    assert 'field(SCAN, "1 second")' in db_counters("P:", 1, scan="1 second")
    assert db_waveforms("P:", 3, 10).count("record(waveform") == 3
    text = db_all_types("P:")
    for name in ["ao", "ai", "bo", "bi", "mbbo", "mbbi", "longout", "longin", "stringout",
                 "stringin", "lsi", "lso", "int64in", "int64out", "wf_text", "wf_empty", "wf_big",
                 "counter", "calc_alarm"] + ["wf_" + t.lower() for t in NUMERIC_WAVEFORMS + ["STRING"]]:
        assert f'"P:{name}"' in text


def test_scalars_start_and_counter_scan() -> None:
    P = unique_prefix()
    with IOC(db_scalars(P, 3, start=10) + db_counters(P, 2, scan=".5 second"), name="gen") as ioc:
        assert [dbf_number(ioc.dbgf(f"{P}s{i}")) for i in (10, 11, 12)] == [10.0, 11.0, 12.0]
        assert "not found" in ioc.dbgf(f"{P}s9").lower()
        assert dbf_string(ioc.dbgf(f"{P}c1.SCAN")) == ".5 second"


def test_db_waveforms_ramp() -> None:
    P = unique_prefix()
    # dbgf prints at most 100 elements: a subArray shows the tail of w0
    tail = (f'record(subArray, "{P}tail") {{\n    field(FTVL, "DOUBLE")\n    field(MALM, "500")\n'
            f'    field(NELM, "10")\n    field(INDX, "490")\n    field(INP, "{P}w0 NPP")\n}}\n')
    with IOC(db_waveforms(P, 3, 500) + db_waveforms(P + "big", 1, 300_000) + tail,
             name="wf") as ioc:
        for i in range(3):
            assert dbf_number(ioc.dbgf(f"{P}w{i}.NORD")) == 500
            assert dbf_number(ioc.dbgf(f"{P}w{i}.NELM")) == 500
            assert dbf_numbers(ioc.dbgf(f"{P}w{i}")) == [float(k) for k in range(100)]
            assert dbf_string(ioc.dbgf(f"{P}w{i}.SEVR")) == "NO_ALARM"
        ioc.dbpf(f"{P}tail.PROC", "1")
        assert dbf_numbers(ioc.dbgf(f"{P}tail")) == [float(k) for k in range(490, 500)]
        assert dbf_number(ioc.dbgf(f"{P}bigw0.NORD")) == 300_000
        assert dbf_numbers(ioc.dbgf(f"{P}bigw0"))[:10] == [float(k) for k in range(10)]


# -- demo ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_main_demo(sig: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "capar.testing", "--pvs", "10", "--prefix", "DEMO:"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        exports = {}
        for line in proc.stdout:
            if line.startswith("export "):
                key, _, value = line[len("export "):].strip().partition("=")
                exports[key] = value
            elif line.startswith("# prefix"):
                break
        port = int(exports["EPICS_CA_SERVER_PORT"])
        assert exports == loopback_env(port, int(exports["EPICS_CA_REPEATER_PORT"]))
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == 2  # IOC and repeater
        with socket.create_connection((LOOPBACK, port), timeout=2):
            pass
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_client_channels_counts_what_clients_hold(ioc: IOC, prefix: str) -> None:
    """The server-side channel count the soak and Ctrl-C tests rely on moves with a client's channels."""
    import capar

    before = ioc.client_channels()
    with capar.Group([prefix + f"s{i}" for i in range(10)]) as g:
        assert g.connected.all()
        assert ioc.wait_client_channels(before + 10) == before + 10
    assert ioc.wait_client_channels(before) == before


def test_process_channels_counts_only_this_process(ioc: IOC, prefix: str) -> None:
    before = ioc.process_channels()
    with capar.Group([prefix + f"s{i}" for i in range(1900, 1912)]) as g:
        assert g.connected.all()
        assert ioc.wait_process_channels(before + 12) == before + 12
        assert ioc.process_channels(pid=1) == 0  # init holds no circuit
    assert ioc.wait_process_channels(before) == before
