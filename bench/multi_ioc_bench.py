"""Many IOCs: N loopback IOCs x M scalars, read one-shot and repeatedly, Coordinator shard_by index vs ioc.

    .venv/bin/python bench/multi_ioc_bench.py [--iocs 8] [--pvs 2500] [--runs 3]

The PV list mixes the IOCs (a fixed shuffle), as a facility-wide scan list does.  Rows, best of N runs:

- single process: C libca (``bench/.build/cref``), pyepics ``caget_many`` and ``capar.acquire``
  (each in a fresh subprocess, bench/clients.py), and ``capar.Group`` repeated reads;
- ``capar.Coordinator(K, shard_by=...)`` for K = 2, 4: the first one-shot get (the Coordinator knows no
  server yet), later one-shot gets, repeated gets on a ShardedGroup, and the number of client circuits
  each IOC serves while that group is connected (``casr``, from :meth:`capar.testing.IOC.client_circuits`).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from coordinator_bench import best  # noqa: E402
from run import best_of, build_cref, client_env, header  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iocs", type=int, default=8)
    ap.add_argument("--pvs", type=int, default=2500, help="scalars per IOC")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10, help="reads per repeated-read measurement")
    args = ap.parse_args(argv)

    from capar.testing import IOCSet

    h = header()
    cref, msg = build_cref()
    print(f"# multi-IOC bench {h['date']}  {h['machine']} {h['nproc']} cores  Python {h['python']}  "
          f"capar {h['versions']['capar']}  pyepics {h['versions']['pyepics']}  C reference: {msg}")
    t0 = time.perf_counter()
    with IOCSet.scalars(args.iocs, args.pvs, tag="MB") as iocs:
        print(f"{args.iocs} IOCs x {args.pvs} scalars started in {time.perf_counter() - t0:.1f} s; "
              f"best of {args.runs}, repeated reads = {args.rounds} rounds")
        names = iocs.all_names
        random.Random(1).shuffle(names)
        n = len(names)
        env, _ = client_env(iocs.env, "multi-ioc-bench")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
            fh.write("\n".join(names) + "\n")
            names_file = fh.name
        rows: list[tuple[str, str, str]] = []
        try:
            single = {}
            if cref:
                single["C libca"] = [cref, "oneshot", names_file]
            single["pyepics caget_many"] = [sys.executable, os.path.join(HERE, "clients.py"), "pyepics_many",
                                            "oneshot", names_file]
            single["capar.acquire"] = [sys.executable, os.path.join(HERE, "clients.py"), "capar_acquire",
                                       "oneshot", names_file]
            for label, cmd in single.items():
                r = best_of(cmd, env, args.runs, 300)
                sec = r.get("seconds")
                rows.append((f"one-shot {n}, 1 process", label,
                             f"{sec:.3f} s, ok {r.get('ok')}" if sec is not None else str(r)[:80]))

            iocs.apply_env()
            import capar

            with capar.Group(names, form="time", connection_timeout=10) as g:
                g.get(timeout=5)
                rep = best(lambda: [g.get(timeout=5) for _ in range(args.rounds)], args.runs) / args.rounds
                ok = int(g.get(timeout=5).ok.sum())
            rows.append((f"repeated {n}, 1 process", "capar.Group.get", f"{rep:.3f} s per read, ok {ok}"))

            for k in (2, 4):
                for shard_by in ("index", "ioc"):
                    label = f"Coordinator({k}, shard_by={shard_by!r})"
                    with capar.Coordinator(k, shard_by=shard_by) as co:
                        co.get(names[:1])  # contexts created in every worker
                        t1 = time.perf_counter()
                        snap = co.get(names, timeout=5, connection_timeout=10)
                        first = time.perf_counter() - t1
                        later = best(lambda: co.get(names, timeout=5, connection_timeout=10), args.runs)
                        rows.append((f"one-shot {n}", label,
                                     f"first {first:.3f} s, later {later:.3f} s, ok {int(snap.ok.sum())}"))
                        with co.connect(names, connection_timeout=10) as sg:
                            sg.get(timeout=5)
                            rep = best(lambda: [sg.get(timeout=5) for _ in range(args.rounds)],
                                       args.runs) / args.rounds
                            circuits = [ioc.client_circuits() for ioc in iocs]
                            ok = int(sg.get(timeout=5).ok.sum())
                        rows.append((f"repeated {n}", label,
                                     f"{rep:.3f} s per read, ok {ok}, circuits per IOC {sorted(set(circuits))} "
                                     f"(total {sum(circuits)})"))
            capar.ca.finalize_libca()
        finally:
            os.unlink(names_file)
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    print()
    for a, b, c in rows:
        print(f"{a:{w1}s}  {b:{w2}s}  {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
