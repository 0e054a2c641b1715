"""Seed: get(wait=False) for many channels, then get_complete (the seed's "Method 3").

Run against the demo IOC:  capar ioc --pvs 1000  (then export the printed EPICS_CA_* lines)
    python examples/seed_get_complete.py PREFIX 1000
"""
import sys
import time

from capar import ca

prefix = sys.argv[1] if len(sys.argv) > 1 else "DEMO:"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
pvnamelist = [f"{prefix}s{i}" for i in range(n)]

t0 = time.perf_counter()
pvchids = [ca.create_channel(name, connect=False, auto_cb=False) for name in pvnamelist]  # note 1
for chid in pvchids:
    ca.connect_channel(chid)
ca.poll()
for chid in pvchids:
    ca.get(chid, wait=False)  # note 2
ca.poll()
pvdata = {ca.name(chid): ca.get_complete(chid) for chid in pvchids}
print(f"{len(pvdata)} values in {time.perf_counter() - t0:.3f} s; first: {pvnamelist[0]} = {pvdata[pvnamelist[0]]}")
