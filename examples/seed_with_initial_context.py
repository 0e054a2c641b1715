"""Seed: a plain threading.Thread whose target is decorated with @withInitialContext.

    python examples/seed_with_initial_context.py PREFIX

The decorator attaches the thread to the initial CA context before the function runs, so PVs created in
the main thread and in the worker threads share one context (as with ca.CAThread).
"""
import sys
import threading
import time

import capar
from capar.ca import current_context, withInitialContext

prefix = sys.argv[1] if len(sys.argv) > 1 else "DEMO:"
lock = threading.Lock()
seen = {}


@withInitialContext
def run_test(runtime=1.0, pvnames=(), run_name="thread"):
    print(f" |-> thread '{run_name}' starts: context is the initial one: {current_context() == initial}")
    pvs = [capar.PV(name) for name in pvnames]

    def on_change(pvname=None, char_value=None, **kw):
        with lock:
            seen.setdefault(run_name, []).append((pvname, char_value))

    for p in pvs:
        p.add_callback(on_change)
    t0 = time.time()
    while time.time() - t0 < runtime:
        time.sleep(0.01)
    for p in pvs:
        p.clear_callbacks()
    print(f" |-> thread '{run_name}' done: {len(seen.get(run_name, []))} changes seen")


if __name__ == "__main__":
    capar.PV(prefix + "counter").wait_for_connection(5.0)  # the seed's advice: first a PV in the main thread
    initial = current_context()
    print("Run 2 background threads (threading.Thread + @withInitialContext):")
    th1 = threading.Thread(target=run_test, kwargs=dict(runtime=1.0, run_name="A",
                                                         pvnames=[prefix + "counter", prefix + "ao"]))
    th2 = threading.Thread(target=run_test, kwargs=dict(runtime=1.5, run_name="B",
                                                         pvnames=[prefix + "counter", prefix + "mbbo"]))
    th1.start(), th2.start()
    th1.join(), th2.join()
    print("Done")
