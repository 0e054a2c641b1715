"""No sequence of public lifecycle calls may crash the interpreter or hang.

A hypothesis rule-based state machine drives ``PV``, ``get_pv``, ``caget(use_monitor=...)``, ``camonitor``,
``ca.create_channel``/``clear_channel``, ``create_subscription``/``clear_subscription``, ``clear_cache``,
``disconnect``/``reconnect`` and ``Group``/``Monitor`` open/close in any order, some calls from a second thread.
It runs in a child process: a segmentation fault (or an abort in libca) fails the test with the steps that
caused it (hypothesis prints them; faulthandler prints the stack).  Errors capar raises on purpose (a
cleared channel, a closed Group) are allowed; anything else fails the run.

Every crash found this way is kept below as a plain regression test.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("hypothesis")

MACHINE = r'''
import faulthandler, sys, threading
faulthandler.enable()
from hypothesis import settings, strategies as st, HealthCheck
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
import capar
from capar import ca

P = sys.argv[1]
EXAMPLES, STEPS = int(sys.argv[2]), int(sys.argv[3])
NAMES = [P + n for n in ("ao", "s1", "s2", "counter", "wf_double", "mbbo")] + [P + "nothere"]
EXPECTED = (ca.CAError, ca.ChannelAccessException, ValueError, TypeError)
name = st.sampled_from(NAMES)


def attempt(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except EXPECTED:
        return None


class Lifecycle(RuleBasedStateMachine):
    pvs = Bundle("pvs")
    chids = Bundle("chids")
    subs = Bundle("subs")
    groups = Bundle("groups")
    monitors = Bundle("monitors")

    @initialize()
    def start(self):
        self.events = []
        self.opened = []

    def in_thread(self, fn):
        out = {}
        def body():
            out["value"] = attempt(fn)
        t = threading.Thread(target=body, daemon=True)
        t.start()
        t.join(20.0)
        assert not t.is_alive(), "a call from a second thread hung for 20 s"
        return out.get("value")

    @rule(target=pvs, n=name, auto=st.sampled_from([None, True, False]), cb=st.booleans())
    def make_pv(self, n, auto, cb):
        return capar.PV(n, auto_monitor=auto, connection_timeout=0.2,
                        callback=(lambda **kw: self.events.append(kw.get("pvname"))) if cb else None)

    @rule(target=pvs, n=name, thread=st.booleans(), cb=st.booleans())
    def cached_pv(self, n, thread, cb):
        call = lambda: capar.get_pv(n, timeout=0.2, connection_callback=(lambda **kw: None) if cb else None,
                                    auto_monitor=True if cb else None)
        pv = self.in_thread(call) if thread else attempt(call)
        return pv if pv is not None else capar.PV(n, connection_timeout=0.2)

    @rule(pv=pvs, thread=st.booleans(), monitor=st.booleans())
    def pv_get(self, pv, thread, monitor):
        call = lambda: pv.get(timeout=0.2, use_monitor=monitor)
        self.in_thread(call) if thread else attempt(call)

    @rule(pv=pvs)
    def pv_put(self, pv):
        if pv.pvname.endswith(("s1", "s2")):
            attempt(pv.put, float(NAMES.index(pv.pvname)), wait=True, timeout=1.0)

    @rule(pv=pvs, thread=st.booleans())
    def pv_disconnect(self, pv, thread):
        self.in_thread(pv.disconnect) if thread else attempt(pv.disconnect)

    @rule(pv=pvs)
    def pv_reconnect(self, pv):
        pv.connection_timeout = 0.2
        attempt(pv.reconnect)

    @rule(pv=pvs, auto=st.booleans())
    def pv_auto_monitor(self, pv, auto):
        attempt(setattr, pv, "auto_monitor", auto)

    @rule(n=name, monitor=st.booleans(), thread=st.booleans())
    def caget(self, n, monitor, thread):
        call = lambda: capar.caget(n, use_monitor=monitor, timeout=0.2, connection_timeout=0.2)
        self.in_thread(call) if thread else attempt(call)

    @rule(n=name, clear=st.booleans())
    def camonitor(self, n, clear):
        attempt(capar.camonitor, n, writer=lambda text: None, connection_timeout=0.2)
        if clear:
            attempt(capar.camonitor_clear, n)

    @rule(target=chids, n=name)
    def create_channel(self, n):
        return attempt(ca.create_channel, n)

    @rule(chid=chids, thread=st.booleans())
    def clear_channel(self, chid, thread):
        if chid is not None:
            call = lambda: ca.clear_channel(chid)
            self.in_thread(call) if thread else attempt(call)

    @rule(chid=chids)
    def channel_get(self, chid):
        if chid is not None:
            attempt(ca.get, chid, timeout=0.2)

    @rule(target=subs, chid=chids)
    def subscribe(self, chid):
        if chid is not None and attempt(ca.connect_channel, chid, timeout=0.2):
            return attempt(ca.create_subscription, chid, callback=lambda **kw: None)
        return None

    @rule(sub=subs, thread=st.booleans(), evid_only=st.booleans())
    def unsubscribe(self, sub, thread, evid_only):
        if sub is not None:
            arg = sub[2] if evid_only else sub
            call = lambda: ca.clear_subscription(arg)
            self.in_thread(call) if thread else attempt(call)

    @rule(thread=st.booleans())
    def clear_cache(self, thread):
        self.in_thread(ca.clear_cache) if thread else attempt(ca.clear_cache)

    @rule(target=groups, names=st.lists(name, min_size=1, max_size=4))
    def group_open(self, names):
        g = attempt(capar.Group, names, connection_timeout=0.2)
        self.opened.append(g)
        return g

    @rule(g=groups, thread=st.booleans())
    def group_get(self, g, thread):
        if g is not None:
            call = lambda: g.get(timeout=0.2)
            self.in_thread(call) if thread else attempt(call)

    @rule(g=groups)
    def group_close(self, g):
        if g is not None:
            attempt(g.close)

    @rule(target=monitors, names=st.lists(name, min_size=1, max_size=4))
    def monitor_open(self, names):
        m = attempt(capar.Monitor, names, connection_timeout=0.2)
        self.opened.append(m)
        return m

    @rule(m=monitors)
    def monitor_drain(self, m):
        if m is not None:
            attempt(m.get_batch, timeout=0.05)

    @rule(m=monitors, thread=st.booleans())
    def monitor_close(self, m, thread):
        if m is not None:
            self.in_thread(m.close) if thread else attempt(m.close)

    def teardown(self):
        # every example starts from a clean process state: what this one opened is closed
        for obj in getattr(self, "opened", ()):
            if obj is not None:
                attempt(obj.close)
        for n in NAMES:
            attempt(capar.camonitor_clear, n)
        attempt(ca.clear_cache)

    @invariant()
    def still_reads(self):
        # the process is alive and a fresh read still works after whatever came before
        value = capar.caget(P + "ao", use_monitor=False, timeout=2.0, connection_timeout=2.0)
        assert isinstance(value, float), f"a fresh caget returned {value!r}"


run_state_machine_as_test(Lifecycle, settings=settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=True, deadline=None, database=None,
    suppress_health_check=list(HealthCheck)))
print("LIFECYCLE OK")
'''


def run_child(code: str, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    try:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung for {timeout} s:\n{exc.stdout}\n{exc.stderr}")


def test_no_lifecycle_sequence_crashes_or_hangs(prefix):
    # CAPAR_FUZZ_EXAMPLES=200 for a deeper run by hand (each example is a fresh sequence of up to 25 calls)
    proc = run_child(MACHINE, prefix, os.environ.get("CAPAR_FUZZ_EXAMPLES", "8"), "25", timeout=600)
    assert proc.returncode == 0 and "LIFECYCLE OK" in proc.stdout, \
        f"exit status {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


REGRESSIONS = {
    # the crash: clear_cache freed the subscription that pv.disconnect then cleared again (SIGSEGV)
    "clear_cache_then_disconnect": """
        epics.caget(P + "ao", use_monitor=True)
        pv = epics.pv.get_pv(P + "ao")
        epics.ca.clear_cache()
        pv.disconnect()
    """,
    # a subscription cleared twice, once by evid and once through its channel
    "subscription_cleared_twice": """
        ch = epics.ca.create_channel(P + "s1", connect=True)
        sub = epics.ca.create_subscription(ch)
        epics.ca.clear_subscription(sub[2])
        epics.ca.clear_subscription(sub)
        epics.ca.clear_channel(ch)
        epics.ca.clear_subscription(sub)
    """,
    # camonitor, then clear_cache, then camonitor_clear and a new camonitor on the same name
    "camonitor_after_clear_cache": """
        epics.camonitor(P + "counter", writer=lambda text: None)
        epics.ca.clear_cache()
        epics.camonitor_clear(P + "counter")
        epics.camonitor(P + "counter", writer=lambda text: None)
        epics.camonitor_clear(P + "counter")
    """,
    # a PV disconnected from another thread while its monitor delivers
    "disconnect_from_a_thread_during_events": """
        import threading
        pv = epics.PV(P + "counter", auto_monitor=True)
        pv.get()
        t = threading.Thread(target=pv.disconnect)
        t.start(); t.join(10)
        assert not t.is_alive()
        epics.ca.clear_cache()
    """,
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_regression(case, prefix):
    code = "import faulthandler, sys\nfaulthandler.enable()\nimport capar as epics\nP = sys.argv[1]\n" + \
        textwrap.dedent(REGRESSIONS[case]) + "\nassert epics.caget(P + 'ao', use_monitor=False) == 3.5\nprint('OK')\n"
    proc = run_child(code, prefix, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr
