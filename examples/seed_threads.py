"""Seed: PVs monitored from two threads attached to the initial context (CAThread / use_initial_context)."""
import sys
import time

import capar
from capar import ca


def run_test(pvnames, runtime, tag):
    ca.use_initial_context()  # or decorate with @ca.withInitialContext, or start a ca.CAThread
    pvs = [capar.PV(n) for n in pvnames]
    for p in pvs:
        p.add_callback(lambda pvname=None, char_value=None, **kw: print(f"   {pvname} = {char_value} ({tag})"))
    t0 = time.time()
    while time.time() - t0 < runtime:
        time.sleep(0.01)
    [p.clear_callbacks() for p in pvs]
    print("Completed Thread ", tag)


if __name__ == "__main__":
    prefix = sys.argv[1] if len(sys.argv) > 1 else "DEMO:"
    print("First, create a PV in the main thread:")
    capar.PV(prefix + "counter").wait_for_connection()
    print("Run 2 Background Threads simultaneously:")
    a = ca.CAThread(target=run_test, args=([prefix + "counter", prefix + "ao"], 1.0, "A"))
    b = ca.CAThread(target=run_test, args=([prefix + "counter", prefix + "ai"], 2.0, "B"))
    a.start(), b.start()
    a.join(), b.join()
    print("Done")
