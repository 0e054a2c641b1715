"""Seed: four ways of connecting to (and reading) many PVs, timed, plus capar.acquire for comparison.

    python examples/seed_connect_methods.py PREFIX [N]      # against the demo IOC: capar ioc --pvs 1000

Method 0: a PV object and a get(), one PV at a time (only the first few PVs: it is the slow way).
Method 1: create every PV object first, then get() each (connections proceed in parallel).
Method 2: caget_many(names) (bulk: one connection wait, one read).
Method 3: ca.create_channel(connect=False, auto_cb=False), connect_channel, get(wait=False), get_complete.
capar.acquire(names): the native bulk path, values as numpy columns.
"""
import sys
import time

import numpy as np

import capar
from capar import ca

prefix = sys.argv[1] if len(sys.argv) > 1 else "DEMO:"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
pvnamelist = [f"{prefix}s{i}" for i in range(n)]
expected = [float(i) for i in range(n)]  # the demo IOC's s<i> records hold i
results = {}


def report(label, count, t0, values):
    dt = time.perf_counter() - t0
    good = sum(1 for v, e in zip(values, expected) if v is not None and float(v) == e)
    print(f"{label}: {count} PVs in {dt:.3f} s ({count / dt:,.0f} PVs/s), {good} values as expected")
    results[label] = good == count


# Method 0: one at a time (a few PVs only)
few = pvnamelist[:20]
t0 = time.perf_counter()
values = []
for name in few:
    pv = capar.PV(name)
    values.append(pv.get())
report("Method 0 (PV + get, one at a time)", len(few), t0, values)

# Method 1: create all PV objects, then get
t0 = time.perf_counter()
pvs = [capar.PV(name) for name in pvnamelist]
values = [p.get() for p in pvs]
report("Method 1 (all PVs, then get)", n, t0, values)

# Method 2: caget_many
t0 = time.perf_counter()
values = capar.caget_many(pvnamelist)
report("Method 2 (caget_many)", n, t0, values)

# Method 3: create_channel / connect_channel / get(wait=False) / get_complete
t0 = time.perf_counter()
chids = [ca.create_channel(name, connect=False, auto_cb=False) for name in pvnamelist]
for chid in chids:
    ca.connect_channel(chid)
ca.poll()
for chid in chids:
    ca.get(chid, wait=False)
ca.poll()
values = [ca.get_complete(chid) for chid in chids]
report("Method 3 (create_channel + get_complete)", n, t0, values)

# the native bulk path
t0 = time.perf_counter()
snap = capar.acquire(pvnamelist, timeout=5.0)
report("capar.acquire (bulk, numpy columns)", n, t0, snap.values.tolist())
assert isinstance(snap.value, np.ndarray)

print("all methods agree" if all(results.values()) else "SOME METHODS DISAGREE")
sys.exit(0 if all(results.values()) else 1)
