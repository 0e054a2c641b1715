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

Many IOCs
---------
:class:`IOCSet` runs N such IOCs, each on its own port, sharing one :class:`CARepeater`, with one
client environment whose ``EPICS_CA_ADDR_LIST`` names all of them.  libca reads the environment once
per process, so clients of an IOCSet usually run in a :class:`ClientProcess` (a fresh Python process
driven by the test) or in Coordinator workers created while ``IOCSet.env`` is in ``os.environ``::

    with IOCSet.scalars(8, 2500) as iocs:         # 8 IOCs x 2,500 ao records, started in parallel
        with iocs.client() as c:
            snap = c.run("capar.acquire(names)", names=iocs.all_names)
        iocs.kill(3); iocs.restart(3)              # a crash, then the IOC back on the same port
        iocs[0].client_circuits()                  # client TCP circuits the IOC serves (casr)

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
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, MutableMapping, Optional, Sequence

import psutil

__all__ = [
    "free_port",
    "unique_prefix",
    "loopback_env",
    "IOC",
    "CARepeater",
    "IOCSet",
    "ClientProcess",
    "record_names",
    "stop_processes",
    "db_all_types",
    "db_scalars",
    "db_counters",
    "db_waveforms",
    "crash_worker",
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


def stop_processes(procs: "Iterable[psutil.Process]", grace: float = 3.0, terminate: bool = True) -> list:
    """Stop processes by pid: SIGTERM (unless *terminate* is False: they are expected to leave by
    themselves), wait *grace* seconds, SIGKILL the rest and reap them.

    Returns
    -------
    list[psutil.Process]
        The processes that were still alive after *grace* seconds (and were killed).
    """
    procs = list(procs)
    if terminate:
        for proc in procs:
            try:
                proc.terminate()
            except psutil.Error:
                pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return alive


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
_STDIN_WATCH = r'''
import os, runpy, signal, sys, threading
signal.signal(signal.SIGINT, signal.SIG_IGN)
def _watch():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
'''
_REPEATER_SCRIPT = _STDIN_WATCH + r'''
sys.argv[1:] = ["--foreground"]  # keep stdin: its EOF is how this repeater learns that its parent died
runpy.run_module("capar.ca.repeater", run_name="__main__", alter_sys=True)
'''

# caproto's fake motor record IOC (a pure-Python CA server with real motor record fields), plus the same
# stdin-EOF watch as the repeater so that it dies with its parent.
_MOTOR_SCRIPT = _STDIN_WATCH + r'''
sys.argv[1:] = ["--prefix", sys.argv[1], "--interfaces", "127.0.0.1", "--quiet"]
runpy.run_module("caproto.ioc_examples.fake_motor_record", run_name="__main__", alter_sys=True)
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
    repeater_port : int, optional
        CA repeater UDP port; :func:`free_port` when omitted.  Several IOCs (and their clients) may
        share one repeater port: the IOCs then send their beacons to that one repeater (see
        :class:`IOCSet`).
    own_repeater : bool
        Start a CA repeater process of this IOC's own on :attr:`repeater_port` (default).  False when
        another process (e.g. a :class:`CARepeater`) already serves that port.

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
                 startup_timeout: float = 60.0, name: str = "ioc", prefix: Optional[str] = None,
                 repeater_port: Optional[int] = None, own_repeater: bool = True) -> None:
        self.db = db
        self.name = name
        self.prefix = prefix
        self.max_array_bytes = int(max_array_bytes)
        self.startup_timeout = float(startup_timeout)
        self._port_given = port is not None
        self.port: int = int(port) if port is not None else free_port()
        self.repeater_port: int = int(repeater_port) if repeater_port is not None else free_port()
        self.own_repeater = bool(own_repeater)
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
                if self.own_repeater:
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

    def process_channels(self, pid: Optional[int] = None, timeout: float = 10.0) -> int:
        """Channels the IOC's CA server holds for the circuits of process *pid* (default: this one).

        Unlike :meth:`client_channels` it does not count other clients (e.g. worker processes of an
        earlier test whose circuits are still closing).

        Parameters
        ----------
        pid : int, optional
            Client process id; ``os.getpid()`` when omitted.
        timeout : float
            Seconds to wait for the ``casr`` answer.
        """
        pid = os.getpid() if pid is None else pid
        owners = _tcp_owners(self.port)
        return sum(n for addr, n in self.clients(timeout) if owners.get(addr) == pid)

    def wait_process_channels(self, expected: int, pid: Optional[int] = None, timeout: float = 10.0) -> int:
        """Wait until :meth:`process_channels` equals *expected* or *timeout* seconds pass; return the last
        count."""
        return _poll_until(lambda: self.process_channels(pid), expected, timeout)

    def wait_client_channels(self, expected: int, timeout: float = 10.0) -> int:
        """Wait until :meth:`client_channels` equals *expected* (clears reach the server asynchronously)
        or *timeout* seconds pass; return the last count.
        """
        return _poll_until(self.client_channels, expected, timeout)

    def clients(self, timeout: float = 10.0) -> list[tuple[str, int]]:
        """The CA clients the IOC's server holds a TCP circuit for, from ``casr 1``.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the answer.

        Returns
        -------
        list[tuple[str, int]]
            One ``("127.0.0.1:PORT", channels)`` per client circuit, in the server's order: the
            client's address (its end of the circuit) and the number of channels it holds there.
        """
        return _parse_casr_clients(self.shell("casr 1", timeout))

    def client_circuits(self, timeout: float = 10.0) -> int:
        """Number of client TCP circuits the IOC's CA server serves right now (from ``casr 1``).

        libca opens one circuit per (client context, server); a process with one CA context that
        holds channels of this IOC counts once, however many channels it holds.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the answer.
        """
        return len(self.clients(timeout))

    def wait_client_circuits(self, expected: int, timeout: float = 10.0) -> int:
        """Wait until :meth:`client_circuits` equals *expected* (circuits close asynchronously) or
        *timeout* seconds pass; return the last count.
        """
        return _poll_until(self.client_circuits, expected, timeout)

    def client_pids(self, timeout: float = 10.0) -> list[Optional[int]]:
        """Pids of the local processes at the client end of each circuit of :meth:`clients`.

        The client addresses the server reports are matched with the TCP connections of this host's
        processes (``psutil``); a circuit whose process cannot be seen (another user's process, or
        a circuit that closed meanwhile) gives ``None``.  ``len(set(ioc.client_pids()))`` is the
        number of processes the IOC serves.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the ``casr`` answer.
        """
        addrs = [addr for addr, _ in self.clients(timeout)]
        owners = _tcp_owners(self.port)
        return [owners.get(addr) for addr in addrs]

    def suspend(self) -> None:
        """Freeze the IOC process (SIGSTOP): its CA server keeps its circuits open but answers nothing
        until :meth:`resume` — a hung IOC.  No-op when the IOC is not running."""
        with self._lock:
            if self.running:
                self.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        """Let a :meth:`suspend`-ed IOC run again (SIGCONT).  No-op when the IOC is not running."""
        with self._lock:
            if self.running:
                self.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    def kill(self, timeout: float = 5.0) -> None:
        """Kill the IOC process with SIGKILL, like a crash: no orderly shutdown of its CA server.

        The port, the repeater and the work directory are kept; :meth:`restart` starts the IOC
        again on the same port.  No-op when the IOC is not running.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the process to be reaped.
        """
        with self._lock:
            proc = self.process
            if proc is None:
                return
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self._stop_ioc(timeout)

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
                    # rsrv could not bind our port (taken between free_port() and iocInit): it then hangs
                    # without a server, so try another port rather than wait for the deadline
                    if any("No TCP server started" in ln for ln in self._log_lines(log_start)):
                        raise _PortTaken(self.port) from None
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
# casr parsing, record names
# --------------------------------------------------------------------------------------------------

_CASR_CLIENT = re.compile(r"^\s*TCP client at (\d+\.\d+\.\d+\.\d+:\d+)\b")
_CASR_CHANNELS = re.compile(r"(\d+) Channels?\b")


def _parse_casr_clients(text: str) -> list[tuple[str, int]]:
    """``casr 1`` output -> ``[("127.0.0.1:PORT", channels), ...]``, one per TCP client circuit."""
    out: list[tuple[str, int]] = []
    current: Optional[str] = None
    for line in text.splitlines():
        m = _CASR_CLIENT.match(line)
        if m:
            if current is not None:
                out.append((current, 0))
            current = m.group(1)
            continue
        if current is not None:
            c = _CASR_CHANNELS.search(line)
            if c:
                out.append((current, int(c.group(1))))
                current = None
            elif line.strip() and not line.startswith((" ", "\t")):
                out.append((current, 0))  # the client block ended without a channel count
                current = None
    if current is not None:
        out.append((current, 0))
    return out


def _poll_until(count: "Callable[[], int]", expected: int, timeout: float) -> int:
    """Call *count* every 50 ms until it returns *expected* or *timeout* seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        n = count()
        if n == expected or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def _tcp_owners(server_port: int) -> dict[str, int]:
    """``{"127.0.0.1:LOCALPORT": pid}`` of this host's TCP connections to 127.0.0.1:*server_port*."""
    def add(out: dict[str, int], conns: Iterable, pid: Optional[int]) -> None:
        for c in conns:
            if c.raddr and c.raddr.port == server_port and c.raddr.ip == LOOPBACK and c.laddr:
                owner = pid if pid is not None else c.pid
                if owner is not None:
                    out[f"{c.laddr.ip}:{c.laddr.port}"] = owner

    owners: dict[str, int] = {}
    try:
        add(owners, psutil.net_connections(kind="tcp4"), None)
    except psutil.AccessDenied:  # not allowed system-wide (macOS): look at each visible process
        for proc in psutil.process_iter(["pid"]):
            try:
                add(owners, proc.net_connections(kind="tcp4"), proc.pid)
            except psutil.Error:
                continue
    return owners


_RECORD_NAME = re.compile(r'\brecord\s*\(\s*"?\w+"?\s*,\s*"?([^",)\s]+)"?\s*\)')


def record_names(db: str) -> list[str]:
    """Names of the records defined in database text *db*, in file order.

    Parameters
    ----------
    db : str
        Database text (``record(TYPE, "NAME") {...}`` ...), e.g. from :func:`db_scalars`.

    Returns
    -------
    list[str]
        Record (= PV) names.
    """
    return _RECORD_NAME.findall(db)


# --------------------------------------------------------------------------------------------------
# a CA repeater on its own, many IOCs sharing it
# --------------------------------------------------------------------------------------------------

class CARepeater:
    """A CA repeater in a subprocess, alone, on UDP port 127.0.0.1:*port*.

    The repeater of an :class:`IOCSet`: every IOC of the set sends its beacons to it and every client
    of the set registers with it.  It exits when its parent process dies (EOF on its stdin).

    Parameters
    ----------
    port : int, optional
        Repeater UDP port; :func:`free_port` when omitted.
    name : str
        Label used in log and error messages.

    Attributes
    ----------
    port : int
        The repeater port.
    process : subprocess.Popen or None
        The repeater process while it runs.
    """

    def __init__(self, port: Optional[int] = None, *, name: str = "repeater") -> None:
        self.port: int = int(port) if port is not None else free_port()
        self.name = name
        self.process: Optional[subprocess.Popen] = None
        self._workdir: Optional[str] = None
        self._lock = threading.RLock()

    @property
    def env(self) -> dict[str, str]:
        """EPICS variables the repeater process runs with (loopback only)."""
        return {"EPICS_CA_REPEATER_PORT": str(self.port), "EPICS_CA_AUTO_ADDR_LIST": "NO",
                "EPICS_CA_ADDR_LIST": LOOPBACK, "EPICS_CAS_INTF_ADDR_LIST": LOOPBACK}

    @property
    def pid(self) -> Optional[int]:
        """Pid of the repeater process, None when it is not running."""
        return self.process.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        """True while the repeater process is alive."""
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        return f"<CARepeater {self.name!r} port={self.port} {'pid=' + str(self.pid) if self.running else 'stopped'}>"

    def start(self, timeout: float = 10.0) -> "CARepeater":
        """Start the repeater and wait (at most *timeout* seconds) until it owns its UDP port.

        Raises
        ------
        RuntimeError
            If the repeater exits or does not bind its port in time (a client would then spawn a
            ``caRepeater`` of its own that outlives the test).
        """
        with self._lock:
            if self.running:
                return self
            self._workdir = tempfile.mkdtemp(prefix=f"capar-{self.name}-")
            log_path = os.path.join(self._workdir, "repeater.log")
            _live.add(self)  # type: ignore[arg-type]
            with open(log_path, "wb") as logf:
                self.process = subprocess.Popen(
                    [sys.executable, "-c", _REPEATER_SCRIPT],
                    stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT,
                    env=_child_env(self.env), cwd=self._workdir,
                )
            deadline = time.monotonic() + timeout
            while True:
                problem = None
                if self.process.poll() is not None:
                    problem = f"exited with status {self.process.returncode}"
                else:
                    try:
                        conns = psutil.Process(self.process.pid).net_connections(kind="udp")
                    except psutil.Error:
                        conns = []
                    if any(c.laddr and c.laddr.port == self.port for c in conns):
                        return self
                    if time.monotonic() > deadline:
                        problem = f"did not bind UDP port {self.port} within {timeout} s"
                if problem is not None:
                    with open(log_path, encoding="utf-8", errors="replace") as f:
                        tail = f.read()[-2000:]
                    self.stop()
                    raise RuntimeError(f"{self.name}: CA repeater {problem}\n{tail}")
                time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the repeater (stdin EOF, then SIGTERM, then SIGKILL) and remove its files; idempotent."""
        with self._lock:
            if self.process is not None:
                _stop_popen(self.process, timeout, close_stdin=True)
                self.process = None
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            _live.discard(self)  # type: ignore[arg-type]

    def __enter__(self) -> "CARepeater":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _in_threads(fn: "Callable[[int], object]", n: int, label: str) -> None:
    """Run ``fn(0) .. fn(n-1)`` in parallel threads; raise one RuntimeError naming every failure."""
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        try:
            fn(k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append((k, exc))

    threads = [threading.Thread(target=run, args=(k,), name=f"capar-{label}-{k}", daemon=True)
               for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        errors.sort(key=lambda e: e[0])
        text = "\n".join(f"[{k}] {type(e).__name__}: {e}" for k, e in errors)
        raise RuntimeError(f"{label}: {len(errors)} of {n} failed:\n{text}") from errors[0][1]


class IOCSet:
    """Many soft IOCs on 127.0.0.1, each on its own CA server port, sharing one CA repeater, and ONE
    client environment that reaches all of them.

    The client environment (:attr:`env`) lists every IOC in ``EPICS_CA_ADDR_LIST``
    (``"127.0.0.1:P1 127.0.0.1:P2 ..."``, ``EPICS_CA_AUTO_ADDR_LIST=NO``) and names the shared
    repeater in ``EPICS_CA_REPEATER_PORT``.  The IOCs send their beacons to that repeater, so a client
    hears an IOC that comes back (:meth:`restart`) like it would on a real network.

    Parameters
    ----------
    dbs : sequence of str
        Database text of each IOC (one IOC per item).
    prefixes : sequence of (str or None), optional
        PV name prefix of each IOC (kept as ``self[k].prefix``).
    max_array_bytes : int
        ``EPICS_CA_MAX_ARRAY_BYTES`` of the IOCs and the clients (bytes).
    startup_timeout : float
        Seconds each IOC may take to start (they start in parallel).
    name : str
        Label; IOC ``k`` is named ``f"{name}-{k}"``.

    Attributes
    ----------
    iocs : list[IOC]
        The IOCs, in the order of *dbs*.
    repeater : CARepeater
        The shared repeater.
    names : list[list[str]]
        PV (record) names each IOC serves: ``names[k]`` for IOC ``k`` (see :func:`record_names`).
    start_seconds : float
        Seconds the last :meth:`start` took (repeater and every IOC up).

    Typical use::

        with IOCSet.scalars(8, 2500) as iocs:
            client = iocs.client()            # a fresh Python process with iocs.env applied
            snap = client.run("capar.acquire(names)", names=iocs.all_names)
    """

    def __init__(self, dbs: "Sequence[str]", *, prefixes: "Optional[Sequence[Optional[str]]]" = None,
                 max_array_bytes: int = 20_000_000, startup_timeout: float = 60.0,
                 name: str = "iocset") -> None:
        dbs = list(dbs)
        if not dbs:
            raise ValueError("an IOCSet needs at least one database")
        if prefixes is None:
            prefixes = [None] * len(dbs)
        prefixes = list(prefixes)
        if len(prefixes) != len(dbs):
            raise ValueError(f"{len(prefixes)} prefixes for {len(dbs)} databases")
        self.name = name
        self.max_array_bytes = int(max_array_bytes)
        self.repeater = CARepeater(name=f"{name}-repeater")
        self.iocs: list[IOC] = [
            IOC(db, max_array_bytes=self.max_array_bytes, startup_timeout=startup_timeout,
                name=f"{name}-{k}", prefix=prefixes[k], repeater_port=self.repeater.port,
                own_repeater=False)
            for k, db in enumerate(dbs)
        ]
        self.names: list[list[str]] = [record_names(db) for db in dbs]
        self._owner: dict[str, int] = {}
        for k, pvs in enumerate(self.names):
            for pv in pvs:
                self._owner.setdefault(pv, k)
        self.start_seconds = float("nan")

    @classmethod
    def scalars(cls, n_iocs: int, pvs_per_ioc: int, *, counters_per_ioc: int = 0,
                counter_scan: str = ".1 second", tag: str = "M", **kwargs: object) -> "IOCSet":
        """A set of *n_iocs* IOCs, each with *pvs_per_ioc* :func:`db_scalars` records (plus
        *counters_per_ioc* :func:`db_counters` records).

        IOC ``k`` has prefix ``f"{base}{k}:"`` (``base`` from :func:`unique_prefix`), scalars
        ``s{i}`` for ``i`` in ``range(k * pvs_per_ioc, (k + 1) * pvs_per_ioc)`` with value
        ``float(i)`` — so every scalar's value is its index in :attr:`all_names` when there are no
        counters — and counters ``c0`` ... .  Other keyword arguments go to :class:`IOCSet`.
        """
        base = unique_prefix(tag)
        prefixes = [f"{base}{k}:" for k in range(n_iocs)]
        dbs = [db_scalars(p, pvs_per_ioc, start=k * pvs_per_ioc)
               + (db_counters(p, counters_per_ioc, counter_scan) if counters_per_ioc else "")
               for k, p in enumerate(prefixes)]
        return cls(dbs, prefixes=prefixes, **kwargs)  # type: ignore[arg-type]

    # -- state ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.iocs)

    def __getitem__(self, k: int) -> IOC:
        return self.iocs[k]

    def __iter__(self) -> "Iterator[IOC]":
        return iter(self.iocs)

    def __repr__(self) -> str:
        up = sum(ioc.running for ioc in self.iocs)
        return f"<IOCSet {self.name!r} {up}/{len(self)} IOCs running, repeater port {self.repeater.port}>"

    @property
    def repeater_port(self) -> int:
        """The shared CA repeater port (UDP, 127.0.0.1)."""
        return self.repeater.port

    @property
    def ports(self) -> list[int]:
        """CA server port of each IOC (TCP and UDP, 127.0.0.1)."""
        return [ioc.port for ioc in self.iocs]

    @property
    def running(self) -> list[bool]:
        """Whether each IOC process is alive."""
        return [ioc.running for ioc in self.iocs]

    @property
    def all_names(self) -> list[str]:
        """Every PV of every IOC: ``names[0] + names[1] + ...``."""
        return [pv for pvs in self.names for pv in pvs]

    @property
    def env(self) -> dict[str, str]:
        """The client environment: :func:`loopback_env` with ``EPICS_CA_ADDR_LIST`` listing every IOC
        (``"127.0.0.1:P1 127.0.0.1:P2 ..."``) and the shared repeater port.

        ``EPICS_CA_SERVER_PORT``/``EPICS_CAS_SERVER_PORT`` are IOC 0's port (clients do not use them:
        every address list entry carries its port).  Read it after :meth:`start`: an IOC whose
        port was taken moves to another one while it starts.
        """
        env = loopback_env(self.iocs[0].port, self.repeater.port, self.max_array_bytes)
        env["EPICS_CA_ADDR_LIST"] = " ".join(f"{LOOPBACK}:{ioc.port}" for ioc in self.iocs)
        return env

    def process_env(self, base: "Optional[Mapping[str, str]]" = None) -> dict[str, str]:
        """A whole environment for a client subprocess: *base* (default ``os.environ``) without any
        ``EPICS_*`` variable, plus :attr:`env`.
        """
        base = os.environ if base is None else base
        out = {k: v for k, v in base.items() if not k.startswith("EPICS_")}
        out.update(self.env)
        return out

    def apply_env(self, environ: MutableMapping[str, str] = os.environ) -> None:
        """Write :attr:`env` into *environ* (default ``os.environ``), minus the name-server variables.

        libca reads the environment once per process: this only helps a process (or the workers of
        a ``capar.Coordinator`` created afterwards) that has no CA context yet.
        """
        for key in _LEAKY_VARS:
            environ.pop(key, None)
        environ.update(self.env)

    def ioc_of(self, pv: str) -> int:
        """Index of the IOC that serves record *pv* (``KeyError`` if none)."""
        return self._owner[pv.split(".", 1)[0]]

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> "IOCSet":
        """Start the repeater, then every IOC in parallel threads; wait until all accept connections.

        On any failure every IOC is stopped and one RuntimeError names each IOC that failed.
        """
        t0 = time.monotonic()
        _live.add(self)  # type: ignore[arg-type]
        try:
            self.repeater.start()
            _in_threads(lambda k: self.iocs[k].start(), len(self.iocs), f"{self.name} start")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every IOC (in parallel), then the repeater; idempotent.

        Parameters
        ----------
        timeout : float
            Seconds each step of each stop may take (see :meth:`IOC.stop`).
        """
        for ioc in self.iocs:
            ioc.resume()  # a suspended IOC could only be killed
        try:
            _in_threads(lambda k: self.iocs[k].stop(timeout), len(self.iocs), f"{self.name} stop")
        finally:
            self.repeater.stop(timeout)
            _live.discard(self)  # type: ignore[arg-type]

    def kill(self, k: int) -> None:
        """Kill IOC *k* with SIGKILL (a crash: its clients see their circuits drop); its port is
        kept for :meth:`restart`."""
        self.iocs[k].kill()

    def restart(self, k: int) -> None:
        """Start IOC *k* again on the same port (after :meth:`kill`, or stop-and-start while it runs)."""
        self.iocs[k].restart()

    def suspend(self, k: int) -> None:
        """Freeze IOC *k* (SIGSTOP, see :meth:`IOC.suspend`) until :meth:`resume`."""
        self.iocs[k].suspend()

    def resume(self, k: int) -> None:
        """Let IOC *k* run again after :meth:`suspend` (SIGCONT)."""
        self.iocs[k].resume()

    def client_circuits(self) -> list[int]:
        """:meth:`IOC.client_circuits` of each IOC (0 for an IOC that is not running)."""
        return [ioc.client_circuits() if ioc.running else 0 for ioc in self.iocs]

    def client(self, name: Optional[str] = None) -> "ClientProcess":
        """A started :class:`ClientProcess` with :attr:`env` (stop it, or use it in ``with``)."""
        return ClientProcess(self.env, name=name or f"{self.name}-client").start()

    def __enter__(self) -> "IOCSet":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# a Python process with its own CA environment, driven by the test
# --------------------------------------------------------------------------------------------------

# Protocol: frames of <8-byte little-endian length><pickle>.  Request (id, code, variables) or None
# (quit); reply (id, "ok", value) or (id, "error", traceback text).  fd 1 is re-pointed to stderr (the
# log file) so that whatever libca or the code prints cannot corrupt the protocol.  EOF on stdin, or
# None: normal interpreter exit (capar's exit hooks run).
_CLIENT_SCRIPT = r'''
import ast, os, pickle, signal, struct, sys, traceback
signal.signal(signal.SIGINT, signal.SIG_IGN)
proto = os.dup(1)
os.dup2(2, 1)
inp = sys.stdin.buffer

def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = inp.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf

def send(obj):
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        data = pickle.dumps((obj[0], "error", "result cannot be pickled: %r" % (exc,)))
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        view = view[os.write(proto, view):]

ns = {"__name__": "__capar_client__"}
exec("import capar, numpy, numpy as np, time, os, sys", ns)
send((0, "ok", os.getpid()))
while True:
    head = read_exact(8)
    if head is None:
        break
    body = read_exact(struct.unpack("<Q", head)[0])
    if body is None:
        break
    req = pickle.loads(body)
    if req is None:
        break
    rid, code, variables = req
    try:
        ns.update(variables)
        tree = ast.parse(code, "<client>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<client>", "exec"), ns)
        value = eval(compile(last, "<client>", "eval"), ns) if last is not None else None
        send((rid, "ok", value))
    except BaseException:
        send((rid, "error", traceback.format_exc()))
sys.stdout.flush()
sys.stderr.flush()
'''


class ClientError(Exception):
    """Code run in a :class:`ClientProcess` raised; the message is the remote traceback."""


class ClientProcess:
    """A fresh Python process with its own EPICS environment that runs code sent by the caller.

    libca reads the environment once per process, so a client of IOCs other than those in this
    process's environment must live in another process.  :meth:`run` executes a code block in a
    namespace that persists between calls (``capar``, ``numpy``/``np``, ``time``, ``os``, ``sys``
    are imported) and returns the value of its last line when that is an expression (pickled back),
    so Groups, Monitors and Coordinators made by one call are used by the next::

        with ClientProcess(iocs.env) as c:
            c.run("g = capar.Group(names, connection_timeout=10)", names=names)
            snap = c.run("g.get(timeout=5)")        # a capar Snapshot, unpickled here

    The process ignores SIGINT and exits (normally: capar's exit hooks run) at :meth:`stop` or when
    this process dies (EOF on its stdin).  Its stdout and stderr go to a log file (:meth:`log_text`).

    Parameters
    ----------
    env : mapping of str to str
        EPICS variables of the client (e.g. :attr:`IOCSet.env`); every ``EPICS_*`` variable of this
        process is left out of the child's environment.
    name : str
        Label used in error messages.
    """

    def __init__(self, env: "Mapping[str, str]", *, name: str = "client") -> None:
        self.env = dict(env)
        self.name = name
        self.process: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self.log_path = ""
        self._workdir: Optional[str] = None
        self._replies: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._reader: Optional[threading.Thread] = None
        self._req = 0
        self._lock = threading.Lock()

    @property
    def pid(self) -> Optional[int]:
        """Pid of the client process (None before :meth:`start`)."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """True while the client process is alive."""
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        return f"<ClientProcess {self.name!r} {'pid=' + str(self.pid) if self.running else 'stopped'}>"

    def start(self, timeout: float = 60.0) -> "ClientProcess":
        """Start the process and wait (at most *timeout* seconds) until it has imported capar."""
        if self.process is not None:
            return self
        self._workdir = tempfile.mkdtemp(prefix=f"capar-{self.name}-")
        self.log_path = os.path.join(self._workdir, "client.log")
        # the log outlives stop() (for failure messages); removed by cleanup(), at GC or at exit
        weakref.finalize(self, shutil.rmtree, self._workdir, ignore_errors=True)
        env = _child_env(self.env)
        for key in _LEAKY_VARS:
            env.pop(key, None)
        _live.add(self)  # type: ignore[arg-type]
        with open(self.log_path, "wb") as logf:
            self.process = subprocess.Popen([sys.executable, "-u", "-c", _CLIENT_SCRIPT],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                                            env=env)
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=_read_frames, args=(self.process.stdout, self._replies),
                                        name=f"capar-{self.name}-replies", daemon=True)
        self._reader.start()
        try:
            self._wait_reply(0, timeout, "start-up")
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, code: str, timeout: float = 60.0, **variables: object) -> object:
        """Run *code* in the client; return the value of its last line if that is an expression.

        Parameters
        ----------
        code : str
            Python statements (dedented); names bound persist for later calls.
        timeout : float
            Seconds to wait for the answer (the code keeps running in the client after a timeout).
        **variables
            Values (pickled) bound in the client's namespace before *code* runs.

        Raises
        ------
        ClientError
            The code raised; the message holds the remote traceback.
        TimeoutError
            No answer within *timeout* seconds.
        RuntimeError
            The client process is gone (the message holds its log tail).
        """
        import pickle
        import struct
        import textwrap

        with self._lock:
            proc = self.process
            if proc is None or proc.poll() is not None or proc.stdin is None:
                raise RuntimeError(f"{self.name}: client process is not running\n{self.log_tail()}")
            self._req += 1
            rid = self._req
            data = pickle.dumps((rid, textwrap.dedent(code), variables), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                proc.stdin.write(struct.pack("<Q", len(data)) + data)
                proc.stdin.flush()
            except OSError as exc:
                raise RuntimeError(f"{self.name}: client stdin closed: {exc}\n{self.log_tail()}") from None
            return self._wait_reply(rid, timeout, code)

    def _wait_reply(self, rid: int, timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout} s to: {what.strip()[:200]}")
            try:
                frame = self._replies.get(timeout=remaining)
            except queue.Empty:
                continue
            if frame is None:
                self._replies.put(None)
                raise RuntimeError(f"{self.name}: client process exited during: {what.strip()[:200]}\n"
                                   f"{self.log_tail()}")
            got, kind, value = frame
            if got is None:
                raise ClientError(f"{self.name}: {value}")
            if got != rid:
                continue  # the late answer of a request that timed out
            if kind == "error":
                raise ClientError(f"{self.name}: {value}")
            return value

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """Ask the client to exit, wait *timeout* seconds, then SIGTERM/SIGKILL; idempotent.

        Returns
        -------
        int or None
            The exit status (0 after a normal exit; negative: killed by that signal).
        """
        import pickle
        import struct

        proc = self.process
        if proc is not None:
            with self._lock:
                try:
                    if proc.stdin is not None and proc.poll() is None:
                        data = pickle.dumps(None)
                        proc.stdin.write(struct.pack("<Q", len(data)) + data)
                        proc.stdin.flush()
                except (OSError, ValueError):
                    pass
            _stop_popen(proc, timeout, close_stdin=True)
            if self._reader is not None:
                self._reader.join(timeout)
                self._reader = None
            if proc.stdout is not None:
                proc.stdout.close()
            self.returncode = proc.returncode
            self.process = None
        _live.discard(self)  # type: ignore[arg-type]
        return self.returncode

    def log_text(self) -> str:
        """Everything the client printed on stdout and stderr so far."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, nlines: int = 40) -> str:
        """The last *nlines* lines of :meth:`log_text`."""
        return "".join(self.log_text().splitlines(keepends=True)[-nlines:]) or "(no client log)"

    def cleanup(self) -> None:
        """Remove the log file and its directory (after :meth:`stop`)."""
        if self._workdir is not None and self.process is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "ClientProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.cleanup()


def _read_frames(stream: IO[bytes], out: "queue.Queue[Optional[tuple]]") -> None:
    import pickle
    import struct

    try:
        while True:
            head = stream.read(8)
            if len(head) < 8:
                break
            (size,) = struct.unpack("<Q", head)
            body = stream.read(size)
            if len(body) < size:
                break
            try:
                out.put(pickle.loads(body))
            except Exception as exc:  # e.g. a class this process cannot import
                out.put((None, "error", f"cannot unpickle the answer: {exc!r}"))
    except (OSError, ValueError, EOFError):
        pass
    finally:
        out.put(None)


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
# fault injection for the parallel layer
# --------------------------------------------------------------------------------------------------

def _crash_class() -> type:
    """The message class of :func:`crash_worker`, made on first use (importing capar.testing stays light)."""
    from dataclasses import dataclass

    from .parallel.shard import Message

    @dataclass(frozen=True)
    class _Crash(Message):
        code: int

        def run(self, server: Any) -> Any:
            os._exit(self.code)  # the way a segfault ends a worker: no clean-up, no reply

    _Crash.__qualname__ = "_Crash"  # pickled by reference as capar.testing._Crash (see __getattr__)
    return _Crash


def __getattr__(name: str) -> Any:
    if name == "_Crash":
        cls = globals()["_Crash"] = _crash_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def crash_worker(coord: Any, slot: int, code: int = 139) -> None:
    """Queue a message that makes worker *slot* of a :class:`~capar.Coordinator` exit with *code* (139 by
    default, as a segfault would) as soon as it reads it; returns at once."""
    cls = globals().get("_Crash") or __getattr__("_Crash")
    coord._send_nowait(slot, cls(code))


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


class MotorIOC:
    """caproto's fake motor record IOC (``caproto.ioc_examples.fake_motor_record``) on 127.0.0.1.

    Three motor records ``PREFIX + "mtr1"`` (velocity 1/s, limits 0..10, PREC 3), ``"mtr2"`` (2/s, -10..20)
    and ``"mtr3"`` (3/s, 0..30), simulated at 10 Hz.  A put to VAL completes at once (the move goes on).
    Needs the ``caproto`` package (the ``test`` extra).

    Parameters
    ----------
    prefix : str, optional
        PV name prefix; :func:`unique_prefix` when omitted.
    port : int, optional
        CA server port; a free port when omitted.
    repeater_port : int, optional
        Port of a CA repeater that is already running (an :class:`IOC`'s); when omitted, the server gets a
        :class:`CARepeater` of its own, so that no client spawns one that outlives the test.
    startup_timeout : float
        Seconds to wait in :meth:`start` for the server to answer.

    Attributes
    ----------
    env : dict[str, str]
        The loopback client environment of this server alone (see :meth:`client_env` to add others).
    motors : list[str]
        The three record names.
    """

    def __init__(self, prefix: Optional[str] = None, port: Optional[int] = None,
                 repeater_port: Optional[int] = None, startup_timeout: float = 30.0,
                 name: str = "motors") -> None:
        self.prefix = prefix or unique_prefix("MTR")
        self.port = port or free_port()
        self.repeater: Optional[CARepeater] = None if repeater_port else CARepeater(name=f"{name}-repeater")
        self.repeater_port = repeater_port or self.repeater.port  # type: ignore[union-attr]
        self.startup_timeout = startup_timeout
        self.name = name
        self.env = loopback_env(self.port, self.repeater_port)
        self.motors = [f"{self.prefix}mtr{i}" for i in (1, 2, 3)]
        self.process: Optional[subprocess.Popen] = None
        self._log: Optional[IO[bytes]] = None

    def client_env(self, *others: Mapping[str, str]) -> dict[str, str]:
        """One client environment reaching this server and the servers of *others* (``IOC.env`` ...)."""
        env = dict(self.env)
        addrs = [env["EPICS_CA_ADDR_LIST"]] + [o["EPICS_CA_ADDR_LIST"] for o in others]
        env["EPICS_CA_ADDR_LIST"] = " ".join(addrs)
        return env

    def start(self) -> "MotorIOC":
        """Start the server and wait until it serves ``mtr1.RTYP`` (raises RuntimeError with its log)."""
        if self.process is not None:
            return self
        if self.repeater is not None:
            self.repeater.start()
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, "-c", _MOTOR_SCRIPT, self.prefix], stdin=subprocess.PIPE,
                                        stdout=self._log, stderr=subprocess.STDOUT, env=_child_env(self.env))
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                problem = f"exited with status {self.process.returncode}"
            elif time.monotonic() > deadline:
                problem = f"did not serve TCP port {self.port} within {self.startup_timeout} s"
            else:
                try:
                    with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.05)
                    continue
            self._log.seek(0)
            tail = self._log.read()[-2000:].decode("utf-8", "replace")
            self.stop()
            raise RuntimeError(f"{self.name}: caproto motor IOC {problem}\n{tail}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server by its handle (stdin EOF, SIGTERM, SIGKILL); idempotent."""
        if self.process is not None:
            _stop_popen(self.process, timeout, close_stdin=True)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.repeater is not None:
            self.repeater.stop()

    def __enter__(self) -> "MotorIOC":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
