"""Seed: CAPool.map — caget over many PVs in a pool of worker processes, each with its own CA context.

    python examples/seed_capool_map.py PREFIX [N] [PROCESSES]

CAPool uses the forkserver start method by default: every worker starts with no inherited libca state.
"""
import sys
import time

import capar


def read_chunk(names):
    """Runs in a worker: one bulk read of a chunk of names."""
    return capar.caget_many(names)


if __name__ == "__main__":
    prefix = sys.argv[1] if len(sys.argv) > 1 else "DEMO:"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    k = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    names = [f"{prefix}s{i}" for i in range(n)]
    t0 = time.perf_counter()
    with capar.CAPool(k) as pool:
        t1 = time.perf_counter()
        values = pool.map(capar.caget, names)                       # one caget per PV
        t2 = time.perf_counter()
        chunks = [names[i::k] for i in range(k)]
        chunked = pool.map(read_chunk, chunks)                      # one caget_many per worker
        t3 = time.perf_counter()
    print(f"pool of {k} started in {t1 - t0:.3f} s")
    print(f"pool.map(caget): {len(values)} values in {t2 - t1:.3f} s; {names[-1]} = {values[-1]}")
    merged = {name: v for chunk, vals in zip(chunks, chunked) for name, v in zip(chunk, vals)}
    print(f"pool.map(caget_many) over {k} chunks: {len(merged)} values in {t3 - t2:.3f} s")
    ok = values == [float(i) for i in range(n)] and [merged[nm] for nm in names] == values
    print("values agree" if ok else "VALUES DISAGREE")
    sys.exit(0 if ok else 1)
