"""Seed: an event loop with capar.poll() versus one with time.sleep() while a callback counts changes.

    python examples/seed_poll_vs_sleep.py PREFIX [SECONDS]   # PREFIX counter changes at 10 Hz

capar's libca context is preemptive (as pyepics'), so callbacks run on libca's threads: both loops see
every change.  poll() additionally lets a non-preemptive context deliver them; sleep() does not burn CPU.
"""
import sys
import time

import capar

prefix = sys.argv[1] if len(sys.argv) > 1 else "DEMO:"
runtime = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
changes = []


def on_changes(pvname=None, value=None, char_value=None, **kw):
    changes.append(value)


mypv = capar.PV(prefix + "counter")
mypv.wait_for_connection(5.0)
mypv.add_callback(on_changes)

for label, wait in (("poll()", capar.poll), ("time.sleep(0.001)", lambda: time.sleep(1.e-3))):
    changes.clear()
    t0 = time.time()
    cpu0 = time.process_time()
    loops = 0
    while time.time() - t0 < runtime:
        wait()
        loops += 1
    n = len(changes)
    ok = n > 0 and all(b > a for a, b in zip(changes, changes[1:]))
    print(f"{label}: {n} changes in {runtime:.1f} s, {loops} loop turns, "
          f"CPU {time.process_time() - cpu0:.2f} s, increasing: {ok}")

mypv.clear_callbacks()
print("done")
