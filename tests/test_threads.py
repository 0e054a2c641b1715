"""The seed's thread section: CAThread, use_initial_context, withInitialContext, create_context."""
from __future__ import annotations

import threading
import time

import capar
from capar import ca


def _run_test(pvnames, runtime, tag, out):
    pvs = [capar.PV(n) for n in pvnames]
    for p in pvs:
        p.add_callback(lambda pvname=None, value=None, **kw: out.append((tag, pvname, value)))
    t0 = time.time()
    while time.time() - t0 < runtime:
        time.sleep(0.01)
    [p.clear_callbacks() for p in pvs]


def test_seed_thread_example_use_initial_context(prefix):
    # first, create a PV in the main thread (the seed's advice)
    assert capar.PV(prefix + "counter").wait_for_connection(5)
    out = []

    def target(names, runtime, tag):
        ca.use_initial_context()
        _run_test(names, runtime, tag, out)

    a = threading.Thread(target=target, args=([prefix + "counter", prefix + "ao"], 0.5, "A"))
    b = threading.Thread(target=target, args=([prefix + "counter", prefix + "c1"], 1.0, "B"))
    a.start(), b.start()
    a.join(10), b.join(10)
    tags = {t for t, _, _ in out}
    assert tags == {"A", "B"}
    # B ran longer: it must have seen counter values after A's callbacks were cleared
    last_a = max(v for t, n, v in out if t == "A" and n == prefix + "counter")
    assert any(v > last_a for t, n, v in out if t == "B" and n == prefix + "counter")


def test_cathread_and_with_initial_context(prefix):
    results = {}

    @ca.withInitialContext
    def decorated():
        results["decorated"] = (ca.current_context(), capar.caget(prefix + "ao"))

    def plain():
        results["cathread"] = (ca.current_context(), capar.caget(prefix + "longin"))

    initial = ca.current_context()
    t1 = threading.Thread(target=decorated)
    t2 = ca.CAThread(target=plain)
    t1.start(), t2.start()
    t1.join(10), t2.join(10)
    assert results["decorated"] == (initial, 3.5)
    assert results["cathread"] == (initial, -7)


def test_pv_created_in_main_read_in_cathread(prefix):
    p = capar.PV(prefix + "stringin")
    assert p.wait_for_connection(5)
    got = []
    t = ca.CAThread(target=lambda: got.append(p.get()))
    t.start()
    t.join(10)
    assert got == ["world"]


def test_thread_without_attach_gets_initial_context(prefix):
    """A plain thread that never attached still works: capar attaches the initial context."""
    got = []
    t = threading.Thread(target=lambda: got.append((ca.get(ca.create_channel(prefix + "ai", connect=True)),)))
    t.start()
    t.join(10)
    assert got == [(1.25,)]


def test_thread_with_own_context(prefix):
    got = {}

    def target():
        ca.create_context()
        ctx = ca.current_context()
        c = ca.create_channel(prefix + "s99", connect=True)
        got["value"] = ca.get(c)
        got["ctx"] = ctx
        ca.destroy_context()
        got["after"] = ca.current_context()

    t = threading.Thread(target=target)
    t.start()
    t.join(10)
    assert got["value"] == 99.0
    assert got["ctx"] != ca.current_context()
    assert got["after"] is None


def test_non_preemptive_mode_in_a_fresh_process(prefix):
    """PREEMPTIVE_CALLBACK = False before the first CA call: gets, puts and monitors via poll()."""
    import os
    import subprocess
    import sys

    code = f"""
import time, capar
from capar import ca
ca.PREEMPTIVE_CALLBACK = False
assert capar.caget({prefix + 'ao'!r}) == 3.5
assert ca.current_context() is not None
seen = []
p = capar.PV({prefix + 'counter'!r})
p.add_callback(lambda value=None, **kw: seen.append(value))
t0 = time.time()
while time.time() - t0 < 0.6:
    ca.poll(evt=0.01, iot=0.01)
assert len(seen) >= 3, seen
print('ok', len(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


CALLBACK_WAITS = r'''
import sys, threading
import capar.ca as ca
P = sys.argv[1]
ca.create_channel(P + "ao", connect=True)
done = []
def on_connection(pvname=None, chid=None, conn=None):
    # a user callback that waits for another thread which itself calls capar
    t = threading.Thread(target=lambda: done.append(ca.create_channel(P + "s5", connect=True)))
    t.start()
    t.join(10.0)
    done.append(not t.is_alive())
ca.create_channel(P + "ao", callback=on_connection)  # already connected: the callback runs at once
print("FINISHED" if done and done[-1] is True and len(done) == 2 else f"STUCK {done}")
'''


def test_connection_callback_waiting_for_a_thread_calling_capar_does_not_deadlock(prefix):
    """capar runs user callbacks outside its own locks (here: a connection callback create_channel runs for
    an already connected channel, which waits for a thread that creates another channel)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", CALLBACK_WAITS, prefix], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "FINISHED", proc.stdout + proc.stderr


CALLBACKS_WAIT_FOR_CAPAR = r'''
import sys, threading, time
import capar, capar.ca as ca
P = sys.argv[1]
ao = ca.create_channel(P + "ao", connect=True)
s5 = ca.create_channel(P + "s5", connect=True)
finished = {}

def capar_work(kind):
    # what takes capar's own locks (context tables, keys, channel entries) and needs nothing from the
    # libca thread the callback is blocking: new channels and PVs, a subscription, puts with and without
    # a completion callback, a get request
    ca.create_channel(P + "s%d" % (10 + len(finished)))
    capar.PV(P + "s%d" % (20 + len(finished)))
    capar.get_pv(P + "s30")
    sub = ca.create_subscription(s5, callback=lambda **kw: None)
    ca.put(ao, 3.5)
    ca.put(ao, 3.5, callback=lambda **kw: None)
    ca.get(s5, wait=False)
    return sub

def waiting(kind):
    def callback(*args, **kwargs):
        if kind in finished:
            return
        t = threading.Thread(target=capar_work, args=(kind,))
        t.start()
        t.join(10.0)  # the callback waits for a thread calling capar
        finished[kind] = (not t.is_alive(), threading.current_thread().name)
    return callback

ca.create_channel(P + "s9", callback=waiting("connection"))           # first connection: libca's thread
ca.replace_access_rights_event(s5, waiting("access"))                # at once: connected already
capar.PV(P + "counter", callback=waiting("value"))                   # monitor events: libca's thread
ca.put(ao, 3.5, callback=waiting("put"))                             # completion: libca's thread
t0 = time.monotonic()
while len(finished) < 4 and time.monotonic() - t0 < 30:
    time.sleep(0.05)
print(sorted((k, v[0]) for k, v in finished.items()))
print("FINISHED" if len(finished) == 4 and all(v[0] for v in finished.values()) else f"STUCK {finished}")
'''


def test_user_callbacks_waiting_for_threads_calling_capar_do_not_deadlock(prefix):
    """Connection, access rights, value (PV monitor) and put callbacks each wait for a thread that calls
    capar (channels, PVs, a subscription, puts, a get request): capar holds none of its locks while a user
    callback runs, so every thread finishes.  (A thread calling ``clear_channel``/``clear_subscription``
    is another matter: libca makes those wait for its callback lock, held by the waiting callback.)"""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", CALLBACKS_WAIT_FOR_CAPAR, prefix], capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "FINISHED", proc.stdout + proc.stderr
