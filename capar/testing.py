"""A real EPICS soft IOC in a subprocess, confined to the loopback interface, for tests and demos.

The IOC runs in a child Python process that loads the ``epicscorelibs`` IOC libraries (``dbCore``,
``rsrv``); a second child runs a CA repeater on a private port.  The calling process never loads
``libca`` (nor any EPICS library): this module imports nothing from capar's CA layer.

Every address the IOC and its clients use is ``127.0.0.1`` (see :func:`loopback_env`), on ports
chosen by :func:`free_port`, so several test sessions can run side by side on one machine and no
Channel Access packet ever leaves the host.

Typical use::

    from capar.testing import IOC, db_all_types, unique_prefix

    P = unique_prefix()
    with IOC(db_all_types(P), prefix=P) as ioc:
        ioc.apply_env()              # before the first CA context is created
        ...                          # CA clients now see P+"ao", P+"counter", ...
        print(ioc.dbgf(P + "ao"))    # read a field inside the IOC: "DBF_DOUBLE: 3.5"

Demo IOC from a shell (prints ``export`` lines for a client shell, stops on Ctrl-C/SIGTERM)::

    python -m capar.testing --pvs 100

Arrays filled after ``iocInit``
-------------------------------
A waveform's ``NORD`` cannot be set from a database file, and a ``{const:[...]}`` link is impractical
for large arrays.  A database line ``# capar:fill NAME COUNT zeros|ramp`` (a comment for EPICS) makes
the IOC process write ``COUNT`` doubles to ``NAME`` with ``dbPutField`` after ``iocInit`` and before
the IOC is reported ready: ``zeros`` writes 0.0, ``ramp`` writes ``k`` at index ``k``.  After that
``NORD == COUNT``.  :func:`db_waveforms` and ``wf_big`` of :func:`db_all_types` use it.
"""
from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import IO, Iterable, MutableMapping, Optional

import psutil

__all__ = [
    "free_port",
    "unique_prefix",
    "loopback_env",
    "IOC",
    "db_all_types",
    "db_scalars",
    "db_counters",
    "db_waveforms",
    "main",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# --------------------------------------------------------------------------------------------------
# ports, prefixes, environment
# --------------------------------------------------------------------------------------------------

_issued_lock = threading.Lock()
_issued_ports: set[int] = set()
_issued_prefixes: set[str] = set()


def free_port() -> int:
    """Return a port that is currently free for both TCP and UDP on 127.0.0.1.

    Both a TCP and a UDP socket are bound to the port to check it; the port is not reserved once
    this returns, but the same port is never returned twice by one process.

    Returns
    -------
    int
        The port number.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
        with _issued_lock:
            if port in _issued_ports:
                continue
            _issued_ports.add(port)
        return port
    raise RuntimeError("could not find a port free for both TCP and UDP on 127.0.0.1")


def unique_prefix(tag: str = "T") -> str:
    """Return a fresh PV name prefix such as ``"T3f9a1c:"`` (random hex, unique per call).

    Parameters
    ----------
    tag : str
        Leading text of the prefix.

    Returns
    -------
    str
        ``tag`` + 6 random hex digits + ``":"``.
    """
    while True:
        prefix = f"{tag}{secrets.token_hex(3)}:"
        with _issued_lock:
            if prefix not in _issued_prefixes:
                _issued_prefixes.add(prefix)
                return prefix


def loopback_env(port: int, repeater_port: int, max_array_bytes: int = 20_000_000) -> dict[str, str]:
    """Return the EPICS environment that confines CA (and PVA) to 127.0.0.1.

    The same variables serve the IOC (``EPICS_CAS_*``) and its clients (``EPICS_CA_*``).

    Parameters
    ----------
    port : int
        CA server port (TCP and UDP) of the IOC.
    repeater_port : int
        CA repeater UDP port.
    max_array_bytes : int
        ``EPICS_CA_MAX_ARRAY_BYTES`` (bytes).

    Returns
    -------
    dict[str, str]
        Variable name to value.
    """
    port_s = str(int(port))
    return {
        "EPICS_CAS_INTF_ADDR_LIST": LOOPBACK,
        "EPICS_CAS_SERVER_PORT": port_s,
        "EPICS_CA_SERVER_PORT": port_s,
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": LOOPBACK,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_ADDR_LIST": f"{LOOPBACK}:{port_s}",
        "EPICS_CA_REPEATER_PORT": str(int(repeater_port)),
        "EPICS_CA_MAX_ARRAY_BYTES": str(int(max_array_bytes)),
        "EPICS_PVAS_INTF_ADDR_LIST": LOOPBACK,
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": LOOPBACK,
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_ADDR_LIST": LOOPBACK,
    }


# Variables that would make a client talk to hosts other than those in the address lists.
_LEAKY_VARS = ("EPICS_CA_NAME_SERVERS", "EPICS_PVA_NAME_SERVERS")


def _child_env(client_env: dict[str, str]) -> dict[str, str]:
    """Environment of the IOC and repeater processes: ours minus every inherited EPICS_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    env.update(client_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --------------------------------------------------------------------------------------------------
# the IOC child process
# --------------------------------------------------------------------------------------------------

# argv: db_path, work_dir.  Protocol on the original stdout (fd 1 is re-pointed to stderr so that
# everything the C libraries print lands in the log): "READY <pid>" once iocInit is done, then one
# line "<id> <json>" per stdin request "<id> <iocsh command>".  "QUIT" on stdin -> os._exit(0);
# EOF without QUIT means the parent died: remove work_dir, then os._exit(0).
_IOC_SCRIPT = r'''
import json, os, signal, sys, traceback
signal.signal(signal.SIGINT, signal.SIG_IGN)
proto = os.dup(1)
os.dup2(2, 1)
db_path, work_dir = sys.argv[1], sys.argv[2]

def send(line):
    data = (line + "\n").encode()
    while data:
        data = data[os.write(proto, data):]

def fills(path):
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 5 and parts[0] == "#" and parts[1] == "capar:fill":
                out.append((parts[2], int(parts[3]), parts[4]))
    return out

def fill(dbCore, name, count, pattern):
    import ctypes
    addr = ctypes.create_string_buffer(512)          # DBADDR is ~48 bytes
    if dbCore.dbNameToAddr(name.encode(), addr):
        raise RuntimeError("capar:fill: no such record " + name)
    buf = (ctypes.c_double * count)()
    if pattern == "ramp":
        try:
            import numpy
            numpy.frombuffer(buf, dtype=numpy.float64)[:] = numpy.arange(count, dtype=numpy.float64)
        except ImportError:
            for k in range(count):
                buf[k] = k
    elif pattern != "zeros":
        raise RuntimeError("capar:fill: unknown pattern " + pattern)
    DBR_DOUBLE = 10
    put = dbCore.dbPutField
    put.argtypes = [ctypes.c_void_p, ctypes.c_short, ctypes.c_void_p, ctypes.c_long]
    put.restype = ctypes.c_long
    if put(addr, DBR_DOUBLE, buf, count):
        raise RuntimeError("capar:fill: dbPutField failed for " + name)

try:
    from epicscorelibs import ioc as _ioc
    _ioc.start_ioc(database=db_path)
    _ioc.dbCore.dbNameToAddr.argtypes = [_ioc.ctypes.c_char_p, _ioc.ctypes.c_void_p]
    _ioc.dbCore.dbNameToAddr.restype = _ioc.ctypes.c_long
    for name, count, pattern in fills(db_path):
        fill(_ioc.dbCore, name, count, pattern)
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(3)

sys.stdout.flush()
sys.stderr.flush()
send("READY %d" % os.getpid())
out_path = os.path.join(work_dir, "iocsh.out")
stdin = sys.stdin.buffer
while True:
    line = stdin.readline()
    if not line:
        break
    line = line.decode("utf-8", "replace").rstrip("\r\n")
    if line == "QUIT":  # orderly stop(): the parent keeps (or removes) the work dir
        os._exit(0)
    req_id, _, cmd = line.partition(" ")
    try:
        if os.path.exists(out_path):
            os.unlink(out_path)
        status = _ioc.ioc('%s > "%s"' % (cmd, out_path))
        text = ""
        if os.path.exists(out_path):
            with open(out_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        reply = {"status": int(status), "out": text}
    except BaseException as exc:
        reply = {"status": -1, "out": "", "error": repr(exc)}
    send(req_id + " " + json.dumps(reply))
sys.stdout.flush()
sys.stderr.flush()
# EOF without QUIT: the parent died without stop(); clean up its temp dir ourselves.
import shutil
shutil.rmtree(work_dir, ignore_errors=True)
os._exit(0)
'''

# The repeater: ``python -m capar.ca.repeater`` (libca's ca_repeater(), blocks in C with the GIL
# released), plus a thread that exits the process at EOF on stdin so it dies with its parent.
_REPEATER_SCRIPT = r'''
import os, runpy, signal, sys, threading
signal.signal(signal.SIGINT, signal.SIG_IGN)
def _watch():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
runpy.run_module("capar.ca.repeater", run_name="__main__", alter_sys=True)
'''

_ERROR_MARKERS = ("ERROR", "Error", "Bad ", "Can't", "failed")

_live: "weakref.WeakSet[IOC]" = weakref.WeakSet()


def _proc_gone(pid: int, create_time: Optional[float]) -> bool:
    """True if ``pid`` no longer names the process created at ``create_time`` (psutil check)."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return True  # the pid was reused by an unrelated process
        return False
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # AccessDenied: reused by another user
        return True


def _stop_popen(proc: subprocess.Popen, timeout: float, close_stdin: bool) -> None:
    """Stop one child via its Popen handle: EOF on stdin, then SIGTERM, then SIGKILL."""
    if close_stdin and proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    if proc.poll() is None and close_stdin:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass


class IOC:
    """An EPICS soft IOC (Channel Access server only) plus a CA repeater, in subprocesses.

    Parameters
    ----------
    db : str
        Database text (``record(...) {...}``) to load.
    port : int, optional
        CA server port; :func:`free_port` when omitted.
    max_array_bytes : int
        ``EPICS_CA_MAX_ARRAY_BYTES`` for the IOC and its clients (bytes).
    startup_timeout : float
        Seconds to wait for the IOC to be up in :meth:`start`.
    name : str
        Label used in log and error messages.
    prefix : str, optional
        PV name prefix used to build ``db``, kept as :attr:`prefix` for the caller's convenience.

    Attributes
    ----------
    port, repeater_port : int
        CA server port and CA repeater port (both on 127.0.0.1).
    env : dict[str, str]
        Client environment, :func:`loopback_env` of the ports.
    pid : int or None
        Pid of the running IOC process.
    process : subprocess.Popen or None
        The IOC process.
    repeater : subprocess.Popen or None
        The CA repeater process.
    db_path : str
        Database file loaded by the IOC (``""`` when not started).
    log_path : str
        File collecting the IOC's stdout/stderr.
    """

    def __init__(self, db: str, *, port: Optional[int] = None, max_array_bytes: int = 20_000_000,
                 startup_timeout: float = 60.0, name: str = "ioc", prefix: Optional[str] = None) -> None:
        self.db = db
        self.name = name
        self.prefix = prefix
        self.max_array_bytes = int(max_array_bytes)
        self.startup_timeout = float(startup_timeout)
        self._port_given = port is not None
        self.port: int = int(port) if port is not None else free_port()
        self.repeater_port: int = free_port()
        self.env: dict[str, str] = loopback_env(self.port, self.repeater_port, self.max_array_bytes)
        self.pid: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None
        self.repeater: Optional[subprocess.Popen] = None
        self.db_path: str = ""
        self.log_path: str = ""
        self._workdir: Optional[str] = None
        self._create_time: Optional[float] = None
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader: Optional[threading.Thread] = None
        self._cmd_lock = threading.Lock()
        self._req = 0
        self._lock = threading.RLock()

    # -- public ------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<IOC {self.name!r} port={self.port} {state}>"

    @property
    def running(self) -> bool:
        """True while the IOC process is alive."""
        return self.process is not None and self.process.poll() is None

    def apply_env(self, environ: MutableMapping[str, str] = os.environ) -> None:
        """Write :attr:`env` into ``environ`` (default ``os.environ``).

        Call it before the first CA context of the process is created: libca reads the environment
        once.  ``EPICS_CA_NAME_SERVERS``/``EPICS_PVA_NAME_SERVERS`` are removed so that no client
        contacts another host.
        """
        for key in _LEAKY_VARS:
            environ.pop(key, None)
        for key, value in self.env.items():
            environ[key] = value

    def start(self) -> "IOC":
        """Start the repeater and the IOC and wait until the IOC accepts CA connections.

        Waits at most :attr:`startup_timeout` seconds.

        Returns
        -------
        IOC
            ``self``.

        Raises
        ------
        RuntimeError
            If the IOC does not come up; the message holds the tail of its log.
        """
        with self._lock:
            if self.running:
                return self
            self._workdir = tempfile.mkdtemp(prefix=f"capar-{self.name}-")
            self.db_path = os.path.join(self._workdir, "ioc.db")
            self.log_path = os.path.join(self._workdir, "ioc.log")
            with open(self.db_path, "w", encoding="utf-8") as f:
                f.write(self.db)
            _live.add(self)
            try:
                self._start_repeater()
                attempts = 1 if self._port_given else 3
                for attempt in range(attempts):
                    try:
                        self._start_ioc()
                        break
                    except _PortTaken:
                        if attempt == attempts - 1:
                            raise RuntimeError(f"{self.name}: CA server port {self.port} is taken")
                        self.port = free_port()
                        self.env = loopback_env(self.port, self.repeater_port, self.max_array_bytes)
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the IOC, then the repeater, and remove the temporary files; idempotent.

        Parameters
        ----------
        timeout : float
            Seconds to wait at each step (stdin EOF, SIGTERM, SIGKILL).
        """
        with self._lock:
            self._stop_ioc(timeout)
            rep = self.repeater
            if rep is not None:
                rep_pid = rep.pid
                try:
                    rep_ct: Optional[float] = psutil.Process(rep_pid).create_time()
                except psutil.Error:
                    rep_ct = None
                _stop_popen(rep, timeout, close_stdin=True)
                self.repeater = None
                if not _proc_gone(rep_pid, rep_ct):
                    raise RuntimeError(f"{self.name}: repeater pid {rep_pid} still alive after stop")
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            _live.discard(self)

    def restart(self) -> None:
        """Stop the IOC process and start it again on the same port (the repeater keeps running)."""
        with self._lock:
            if self._workdir is None:
                raise RuntimeError(f"{self.name}: restart() needs a started IOC")
            self._stop_ioc(5.0)
            last: Optional[BaseException] = None
            for _ in range(5):
                try:
                    self._start_ioc()
                    return
                except (_PortTaken, RuntimeError) as exc:
                    last = exc
                    self._stop_ioc(5.0)
                    time.sleep(0.5)
            raise RuntimeError(f"{self.name}: restart on port {self.port} failed: {last}")

    def shell(self, cmd: str, timeout: float = 10.0) -> str:
        """Run one iocsh command inside the IOC process and return what it printed.

        Parameters
        ----------
        cmd : str
            The command line, e.g. ``"dbgf P:ao.EGU"`` (no newline, no output redirection).
        timeout : float
            Seconds to wait for the answer.

        Returns
        -------
        str
            The command's output.
        """
        if "\n" in cmd or "\r" in cmd:
            raise ValueError("iocsh command must be a single line")
        with self._cmd_lock:
            proc = self.process
            if proc is None or proc.poll() is not None or proc.stdin is None:
                raise RuntimeError(f"{self.name}: IOC is not running")
            self._req += 1
            req = str(self._req)
            try:
                proc.stdin.write((req + " " + cmd + "\n").encode("utf-8"))
                proc.stdin.flush()
            except OSError as exc:
                raise RuntimeError(f"{self.name}: IOC stdin closed: {exc}") from None
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}: no answer to {cmd!r} within {timeout} s")
                try:
                    line = self._lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if line is None:
                    self._lines.put(None)
                    raise RuntimeError(f"{self.name}: IOC exited during {cmd!r}\n{self.log_tail()}")
                rid, _, payload = line.partition(" ")
                if rid != req:
                    continue  # stale answer of a timed-out request
                reply = json.loads(payload)
                if "error" in reply:
                    raise RuntimeError(f"{self.name}: {cmd!r} failed: {reply['error']}")
                return reply["out"]

    def dbgf(self, name: str, timeout: float = 10.0) -> str:
        """Return the IOC's ``dbgf NAME`` output, stripped, e.g. ``'DBF_DOUBLE:  3.5'``.

        Parameters
        ----------
        name : str
            Record or ``record.FIELD`` name (``.VAL$`` gives long strings as char arrays).
        timeout : float
            Seconds to wait for the answer.
        """
        return self.shell(f"dbgf {name}", timeout).strip()

    def client_channels(self, timeout: float = 10.0) -> int:
        """Number of channels the IOC's CA server holds for all its clients (from ``casr 1``).

        Parameters
        ----------
        timeout : float
            Seconds to wait for the answer.
        """
        return sum(int(n) for n in re.findall(r"(\d+) Channels?\b", self.shell("casr 1", timeout)))

    def wait_client_channels(self, expected: int, timeout: float = 10.0) -> int:
        """Wait until :meth:`client_channels` equals *expected* (clears reach the server asynchronously)
        or *timeout* seconds pass; return the last count.
        """
        deadline = time.monotonic() + timeout
        while True:
            n = self.client_channels()
            if n == expected or time.monotonic() > deadline:
                return n
            time.sleep(0.05)

    def dbpf(self, name: str, value: str, timeout: float = 10.0) -> str:
        """Write ``value`` with the IOC's ``dbpf`` (arrays as JSON: ``'[1,2,3]'``) and return its output.

        Parameters
        ----------
        name : str
            Record or ``record.FIELD`` name.
        value : str
            Value text, passed to ``dbpf`` in double quotes.
        timeout : float
            Seconds to wait for the answer.
        """
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return self.shell(f'dbpf {name} "{escaped}"', timeout).strip()

    def log_tail(self, nlines: int = 40) -> str:
        """Return the last ``nlines`` lines of the IOC's log (stdout and stderr)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-nlines:])
        except OSError:
            return "(no IOC log)"

    def __enter__(self) -> "IOC":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------------

    def _start_repeater(self) -> None:
        assert self._workdir is not None
        rep_log = os.path.join(self._workdir, "repeater.log")
        with open(rep_log, "wb") as logf:
            try:
                self.repeater = subprocess.Popen(
                    [sys.executable, "-c", _REPEATER_SCRIPT],
                    stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT,
                    env=_child_env(self.env), cwd=self._workdir,
                )
            except OSError as exc:
                log.warning("%s: could not start CA repeater: %s", self.name, exc)
                self.repeater = None
                return
        # Wait until it owns its UDP port, so libca in the IOC does not spawn a caRepeater itself.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.repeater.poll() is not None:
                with open(rep_log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-2000:]
                log.warning("%s: CA repeater exited (%s): %s", self.name, self.repeater.returncode, tail)
                _stop_popen(self.repeater, 5.0, close_stdin=True)
                self.repeater = None
                return
            try:
                conns = psutil.Process(self.repeater.pid).net_connections(kind="udp")
            except psutil.Error:
                conns = []
            if any(c.laddr and c.laddr.port == self.repeater_port for c in conns):
                return
            time.sleep(0.05)
        log.warning("%s: CA repeater did not bind UDP port %d within 10 s", self.name, self.repeater_port)

    def _start_ioc(self) -> None:
        assert self._workdir is not None
        self._lines = queue.Queue()
        log_start = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        env = _child_env(self.env)
        # libca (dbCa's client context) spawns "caRepeater" from PATH when no repeater holds the
        # repeater port; such a detached process would outlive us.  Our repeater normally holds the
        # port; in case it could not start, give the IOC a PATH where no caRepeater can be found.
        env["PATH"] = self._workdir
        with open(self.log_path, "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-u", "-c", _IOC_SCRIPT, self.db_path, self._workdir],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                env=env, cwd=self._workdir,
            )
        self.process = proc
        self.pid = proc.pid
        try:
            self._create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            self._create_time = None
        assert proc.stdout is not None
        self._reader = threading.Thread(target=_read_lines, args=(proc.stdout, self._lines),
                                        name=f"capar-{self.name}-stdout", daemon=True)
        self._reader.start()

        deadline = time.monotonic() + self.startup_timeout
        try:
            # 1. READY after iocInit (and after the capar:fill writes)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"no READY within {self.startup_timeout} s")
                try:
                    line = self._lines.get(timeout=min(remaining, 0.5))
                except queue.Empty:
                    continue
                if line is None:
                    proc.wait(5)
                    raise RuntimeError(f"IOC process exited with status {proc.returncode}")
                if line.startswith("READY"):
                    break
            # 2. dbLoadRecords / iocInit complaints in the log
            bad = [ln for ln in self._log_lines(log_start)
                   if any(m in ln for m in _ERROR_MARKERS) and not ln.startswith("IOC Starting w/")]
            if bad:
                raise RuntimeError("IOC reported errors while loading:\n" + "\n".join(bad))
            # 3. the CA server listens on OUR port (rsrv silently falls back to another port if taken)
            while True:
                try:
                    conns = psutil.Process(proc.pid).net_connections(kind="tcp")
                except psutil.Error:
                    conns = []
                listening = [c for c in conns if c.status == psutil.CONN_LISTEN]
                if any(c.laddr.port == self.port for c in listening):
                    break
                if listening and not any(c.laddr.port == self.port for c in listening):
                    raise _PortTaken(self.port)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"CA server not listening on {LOOPBACK}:{self.port}")
                time.sleep(0.05)
            # 4. and accepts a connection
            while True:
                try:
                    with socket.create_connection((LOOPBACK, self.port), timeout=1.0):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"CA server on {LOOPBACK}:{self.port} refuses connections")
                    time.sleep(0.05)
        except _PortTaken:
            self._stop_ioc(5.0)
            raise
        except BaseException as exc:
            tail = self.log_tail()
            self._stop_ioc(5.0)
            if isinstance(exc, RuntimeError):
                raise RuntimeError(f"{self.name}: IOC failed to start: {exc}\n--- IOC log tail ---\n"
                                   f"{tail}") from None
            raise

    def _stop_ioc(self, timeout: float) -> None:
        proc = self.process
        if proc is None:
            return
        pid, ct = proc.pid, self._create_time
        locked = self._cmd_lock.acquire(timeout=timeout)
        try:
            if proc.stdin is not None and proc.poll() is None:
                proc.stdin.write(b"QUIT\n")
                proc.stdin.flush()
        except (OSError, ValueError):
            pass
        finally:
            if locked:
                self._cmd_lock.release()
        _stop_popen(proc, timeout, close_stdin=True)
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()
        self.process = None
        self.pid = None
        if not _proc_gone(pid, ct):
            raise RuntimeError(f"{self.name}: IOC pid {pid} still alive after stop")

    def _log_lines(self, start: int = 0) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []


class _PortTaken(Exception):
    """The IOC could not get its CA server port."""


def _read_lines(stream: IO[bytes], out: "queue.Queue[Optional[str]]") -> None:
    try:
        for raw in iter(stream.readline, b""):
            out.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
    except (OSError, ValueError):
        pass
    finally:
        out.put(None)


@atexit.register
def _stop_all() -> None:
    for ioc in list(_live):
        try:
            ioc.stop()
        except Exception as exc:  # pragma: no cover - best effort at interpreter exit
            log.warning("could not stop %r at exit: %s", ioc, exc)


# --------------------------------------------------------------------------------------------------
# database generators
# --------------------------------------------------------------------------------------------------

def _q(value: object) -> str:
    """Double-quoted db field value."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _record(rtype: str, name: str, fields: Iterable[tuple[str, object]]) -> str:
    body = "".join(
        f"    field({k}, {v})\n" if k in ("INP", "DOL") and str(v).startswith("{")
        else f"    field({k}, {_q(v)})\n"
        for k, v in fields
    )
    return f"record({rtype}, {_q(name)}) {{\n{body}}}\n"


WAVEFORM_FTVLS = ("CHAR", "UCHAR", "SHORT", "USHORT", "LONG", "ULONG", "INT64", "UINT64",
                  "FLOAT", "DOUBLE", "STRING")


def db_all_types(prefix: str) -> str:
    """Database with one record of every common type, all initialised (PINI) to known values.

    Records (``P`` = ``prefix``): ``ao`` 3.5 mm PREC 3 with limits/alarms, ``ai`` 1.25 V, ``bo`` On,
    ``bi`` Closed, ``mbbo`` Two, ``mbbi`` B, ``longout`` 42, ``longin`` -7, ``stringout`` hello,
    ``stringin`` world, ``lsi`` "L"*100, ``lso`` (empty, SIZV 256), ``int64in`` 2**40+1,
    ``int64out`` -2**33, ``wf_char`` ... ``wf_string`` (NELM 16, [1..5] / ["a","bb","ccc"]),
    ``wf_text`` "Hello EPICS", ``wf_empty`` (NORD 0), ``wf_big`` (200000 zeros, NORD 200000),
    ``counter`` (+1 at 10 Hz), ``calc_alarm`` (20.0, MAJOR HIHI alarm).

    Parameters
    ----------
    prefix : str
        PV name prefix.

    Returns
    -------
    str
        Database text.
    """
    P = prefix
    recs = [
        _record("ao", P + "ao", [
            ("VAL", "3.5"), ("EGU", "mm"), ("PREC", "3"), ("HOPR", "10"), ("LOPR", "-10"),
            ("DRVH", "9"), ("DRVL", "-9"), ("HIHI", "8"), ("HIGH", "6"), ("LOW", "-6"),
            ("LOLO", "-8"), ("HHSV", "MAJOR"), ("HSV", "MINOR"), ("LSV", "MINOR"),
            ("LLSV", "MAJOR"), ("PINI", "YES")]),
        _record("ai", P + "ai", [
            ("INP", "{const:1.25}"), ("EGU", "V"), ("PREC", "2"), ("HOPR", "100"), ("LOPR", "0"),
            ("PINI", "YES")]),
        _record("bo", P + "bo", [("ZNAM", "Off"), ("ONAM", "On"), ("VAL", "1"), ("PINI", "YES")]),
        _record("bi", P + "bi", [("ZNAM", "Closed"), ("ONAM", "Open"), ("VAL", "0"), ("PINI", "YES")]),
        _record("mbbo", P + "mbbo", [
            ("ZRST", "Zero"), ("ONST", "One"), ("TWST", "Two"), ("THST", "Three"), ("VAL", "2"),
            ("PINI", "YES")]),
        _record("mbbi", P + "mbbi", [
            ("ZRST", "A"), ("ONST", "B"), ("TWST", "C"), ("THST", "D"), ("VAL", "1"), ("PINI", "YES")]),
        _record("longout", P + "longout", [
            ("VAL", "42"), ("EGU", "cts"), ("HOPR", "1000"), ("LOPR", "-1000"), ("PINI", "YES")]),
        _record("longin", P + "longin", [("VAL", "-7"), ("PINI", "YES")]),
        _record("stringout", P + "stringout", [("VAL", "hello"), ("PINI", "YES")]),
        _record("stringin", P + "stringin", [("VAL", "world"), ("PINI", "YES")]),
        _record("lsi", P + "lsi", [("SIZV", "256"), ("INP", '{const:"' + "L" * 100 + '"}'),
                                   ("PINI", "YES")]),
        _record("lso", P + "lso", [("SIZV", "256"), ("PINI", "YES")]),
        _record("int64in", P + "int64in", [("VAL", str(2**40 + 1)), ("PINI", "YES")]),
        _record("int64out", P + "int64out", [("VAL", str(-(2**33))), ("PINI", "YES")]),
    ]
    for ftvl in WAVEFORM_FTVLS:
        init = '{const:["a","bb","ccc"]}' if ftvl == "STRING" else "{const:[1,2,3,4,5]}"
        recs.append(_record("waveform", P + "wf_" + ftvl.lower(), [
            ("FTVL", ftvl), ("NELM", "16"), ("INP", init), ("PINI", "YES")]))
    recs += [
        _record("waveform", P + "wf_text", [
            ("FTVL", "CHAR"), ("NELM", "64"), ("INP", '{const:"Hello EPICS"}'), ("PINI", "YES")]),
        _record("waveform", P + "wf_empty", [("FTVL", "DOUBLE"), ("NELM", "10"), ("PINI", "YES")]),
        _record("waveform", P + "wf_big", [("FTVL", "DOUBLE"), ("NELM", "200000"), ("PINI", "YES")]),
        f"# capar:fill {P}wf_big 200000 zeros\n",
        _record("calc", P + "counter", [
            ("SCAN", ".1 second"), ("CALC", "A+1"), ("INPA", P + "counter NPP")]),
        _record("ai", P + "calc_alarm", [
            ("INP", "{const:20}"), ("HIHI", "10"), ("HHSV", "MAJOR"), ("PREC", "1"), ("PINI", "YES")]),
    ]
    return "".join(recs)


def db_scalars(prefix: str, n: int, start: int = 0) -> str:
    """Database of ``n`` ao records ``P+f"s{i}"``, ``i`` in ``range(start, start+n)``, VAL ``float(i)``.

    Each has PREC 2, EGU "u" and PINI YES.

    Parameters
    ----------
    prefix : str
        PV name prefix.
    n : int
        Number of records.
    start : int
        First index.

    Returns
    -------
    str
        Database text.
    """
    return "".join(
        f'record(ao, "{prefix}s{i}") {{\n    field(VAL, "{float(i)!r}")\n    field(PREC, "2")\n'
        f'    field(EGU, "u")\n    field(PINI, "YES")\n}}\n'
        for i in range(start, start + n)
    )


def db_counters(prefix: str, n: int, scan: str = ".1 second") -> str:
    """Database of ``n`` calc records ``P+f"c{i}"`` counting up (``A+1``, INPA self NPP) at ``scan``.

    Parameters
    ----------
    prefix : str
        PV name prefix.
    n : int
        Number of records.
    scan : str
        SCAN field, e.g. ``".1 second"`` (period in seconds).

    Returns
    -------
    str
        Database text.
    """
    return "".join(
        f'record(calc, "{prefix}c{i}") {{\n    field(SCAN, {_q(scan)})\n    field(CALC, "A+1")\n'
        f'    field(INPA, "{prefix}c{i} NPP")\n}}\n'
        for i in range(n)
    )


def db_waveforms(prefix: str, n: int, nelm: int) -> str:
    """Database of ``n`` DOUBLE waveforms ``P+f"w{i}"`` with NELM and NORD ``nelm``.

    Element ``k`` of every waveform holds ``float(k)`` (written by the IOC process after ``iocInit``,
    see the module docstring), so readers see ``nelm`` elements ``0.0, 1.0, ...``.

    Parameters
    ----------
    prefix : str
        PV name prefix.
    n : int
        Number of records.
    nelm : int
        Elements per waveform.

    Returns
    -------
    str
        Database text.
    """
    return "".join(
        f'record(waveform, "{prefix}w{i}") {{\n    field(FTVL, "DOUBLE")\n    field(NELM, "{nelm}")\n'
        f'    field(PINI, "YES")\n}}\n# capar:fill {prefix}w{i} {nelm} ramp\n'
        for i in range(n)
    )


# --------------------------------------------------------------------------------------------------
# demo IOC
# --------------------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    """Run a demo IOC until Ctrl-C or SIGTERM: ``python -m capar.testing --pvs N [--prefix P]``.

    Prints ``export EPICS_...=...`` lines for a client shell on stdout.

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m capar.testing",
                                     description="Run a loopback-only demo EPICS IOC.")
    parser.add_argument("--pvs", type=int, default=100, help="number of ao records PREFIX s0..s{N-1}")
    parser.add_argument("--prefix", default=None, help="PV name prefix (default: random 'DEMOxxxxxx:')")
    parser.add_argument("--port", type=int, default=None, help="CA server port (default: a free one)")
    args = parser.parse_args(argv)
    prefix = args.prefix if args.prefix is not None else unique_prefix("DEMO")

    stop_event = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_event.set()

    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    ioc = IOC(db_all_types(prefix) + db_scalars(prefix, args.pvs), port=args.port, name="demo",
              prefix=prefix)
    try:
        ioc.start()
        for key, value in ioc.env.items():
            print(f"export {key}={value}")
        print(f"# prefix={prefix} records {prefix}s0 .. {prefix}s{args.pvs - 1}, {prefix}ao, "
              f"{prefix}counter, ... (IOC pid {ioc.pid}); Ctrl-C to stop")
        sys.stdout.flush()
        while not stop_event.wait(0.5):
            if not ioc.running:
                print("IOC exited unexpectedly:\n" + ioc.log_tail(), file=sys.stderr)
                return 1
        return 0
    finally:
        ioc.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
