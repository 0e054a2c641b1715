"""Seed: the main process and a CAProcess each use the same PV, results come back on a Queue."""
from multiprocessing import Queue
import sys

import capar


def subprocess(q, *pvnames):
    mypvs = [capar.get_pv(name) for name in pvnames]
    q.put([(p.pvname, p.get(as_string=True)) for p in mypvs])


if __name__ == "__main__":
    prefix = sys.argv[1] if len(sys.argv) > 1 else "DEMO:"
    names = [prefix + "ao", prefix + "mbbo"]
    print("main:", [(n, capar.caget(n, as_string=True)) for n in names])
    q = Queue()  # the standard Queue, as in the seed
    proc = capar.CAProcess(target=subprocess, args=(q, *names))
    proc.start()
    print("child:", q.get(timeout=30))
    proc.join()
    with capar.CAPool(2) as pool:
        print("pool:", pool.map(capar.caget, names))
