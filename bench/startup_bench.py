"""Start-up cost: one PV read by a whole new process, wall clock, side by side in one run.

    .venv/bin/python bench/startup_bench.py [--runs N]

What a shell pipeline (``x=$(capar get -t PV)``), a cron job or a one-off script pays: interpreter start,
imports, library loading, context creation, connect, read, exit.  Clients, each a fresh process per run,
interleaved so that machine noise hits them alike; median and best of N runs:

- ``C libca``: ``bench/.build/cref oneshot`` on one name (the C reference, see bench/run.py);
- ``capar get``: the console script;
- ``capar.caget script`` / ``pyepics caget script``: ``python -c "import X; print(X.caget(PV))"``;
- ``python -c pass``: the interpreter alone, for scale.

A repeater already runs on the IOC's repeater port (as on a machine where any CA client ran before).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import build_cref, client_env, header  # noqa: E402

from capar.testing import IOC, db_all_types, db_scalars, unique_prefix  # noqa: E402


def _clients(pv: str, names_file: str, cref: str | None) -> dict[str, list[str]]:
    py = sys.executable
    bindir = os.path.dirname(py)
    out: dict[str, list[str]] = {"python -c pass": [py, "-c", "pass"]}
    if cref:
        out["C libca"] = [cref, "oneshot", names_file]
    out["capar get"] = [os.path.join(bindir, "capar"), "get", pv]
    out["capar.caget script"] = [py, "-c", f"import capar; print(capar.caget({pv!r}))"]
    try:
        import epics  # noqa: F401

        out["pyepics caget script"] = [py, "-c", f"import epics; print(epics.caget({pv!r}))"]
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="runs per client (default 15)")
    args = ap.parse_args(argv)
    cref, msg = build_cref()
    # byte-compile capar as `pip install` does (an editable install compiles on first import, and not at
    # all under PYTHONDONTWRITEBYTECODE=1, which would time the compiler instead of the import)
    import compileall

    import capar

    compileall.compile_dir(os.path.dirname(capar.__file__), quiet=1)
    h = header()
    print(f"# start-up bench {h['date']}  {h['machine']} {h['nproc']} cores  Python {h['python']}  "
          f"capar {h['versions']['capar']}  pyepics {h['versions']['pyepics']}  C reference: {msg}")
    prefix = unique_prefix("SU")
    with IOC(db_all_types(prefix) + db_scalars(prefix, 10), name="startup", prefix=prefix) as ioc:
        env, _ = client_env(ioc.env, "startup-bench")
        pv = prefix + "s3"
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
            fh.write(pv + "\n")
            names_file = fh.name
        try:
            clients = _clients(pv, names_file, cref)
            times: dict[str, list[float]] = {k: [] for k in clients}
            errors: dict[str, str] = {}
            for _ in range(args.runs):
                for key, cmd in clients.items():
                    t0 = time.perf_counter()
                    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
                    dt = time.perf_counter() - t0
                    want = {"python -c pass": "", "C libca": '"ok": 1'}.get(key, "3")
                    if p.returncode != 0 or want not in p.stdout:
                        errors[key] = (p.stderr.strip().splitlines() or [p.stdout.strip()])[-1][:200]
                    times[key].append(dt)
        finally:
            os.unlink(names_file)
    c_med = statistics.median(times["C libca"]) if "C libca" in times else None
    py_med = statistics.median(times["pyepics caget script"]) if "pyepics caget script" in times else None
    print(f"\none PV, new process per read, {args.runs} runs each (seconds, wall clock)")
    print(f"{'client':24s} {'median':>8s} {'best':>8s} {'x C':>6s} {'x pyepics':>10s}  note")
    for key, ts in times.items():
        med = statistics.median(ts)
        xc = f"{med / c_med:.1f}x" if c_med else "-"
        xp = f"{med / py_med:.2f}x" if py_med else "-"
        print(f"{key:24s} {med:8.3f} {min(ts):8.3f} {xc:>6s} {xp:>10s}  {errors.get(key, '')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
