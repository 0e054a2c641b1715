# Every target creates .venv and installs what it needs, idempotently (stamp files track setup.cfg).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench soak pyepics-suite clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

# `pip install -e .` also compiles capar's optional C core (capar/ca/_core.c) where a compiler exists
$(VENV)/.stamp-base: setup.cfg setup.py pyproject.toml capar/ca/_core.c | $(PY)
	$(PIP) install -e . tqdm
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PIP) install -e '.[test]'
	touch $@

# ophyd-epicsrs (the Rust CA client, a bench peer) pins ophyd 1.6: installed without its dependencies, so
# that the ophyd of the test extra stays (its bulk_get needs none of them)
$(VENV)/.stamp-bench: $(VENV)/.stamp-base
	$(PIP) install -e '.[bench]' || $(PIP) install pyepics
	$(PIP) install --no-deps ophyd-epicsrs || echo "ophyd-epicsrs not installable here: its bench rows are skipped"
	touch $@

demo: $(VENV)/.stamp-base
	$(PY) -m capar.demo

# the whole suite on the path this machine runs (the compiled core where it was built), then the bulk,
# monitor and coordinator tests again on the pure-ctypes path (CAPAR_CORE=0)
PURE_TESTS = tests/test_bulk.py tests/test_monitor.py tests/test_coordinator.py tests/test_core.py

test: $(VENV)/.stamp-test
	$(PY) -m pytest -q -m "not soak" tests
	CAPAR_CORE=0 $(PY) -m pytest -q -m "not soak" $(PURE_TESTS)

soak: $(VENV)/.stamp-test
	$(PY) -m pytest -q -s -m soak tests

pyepics-suite: $(VENV)/.stamp-test
	CAPAR_PYEPICS_SUITE=all $(PY) -m pytest -q tests/test_pyepics_suite.py

bench: $(VENV)/.stamp-bench
	$(PY) bench/run.py
	$(PY) bench/coordinator_bench.py
	$(PY) bench/monitor_bench.py --n 1000,5000
	$(PY) bench/monitor_bench.py --n 20000 --clients C,capar,capar_pure,capar_k2
	$(PY) bench/search_cycles.py
	$(PY) bench/memory_bench.py
	$(PY) bench/startup_bench.py
	$(PY) bench/multi_ioc_bench.py
	$(PY) bench/dask_bench.py
	$(PY) bench/files_bench.py
	$(PY) bench/aio_bench.py
	$(PY) bench/bluesky_bench.py
	$(PY) bench/multi_ioc_bench.py --iocs 1 --pvs 20000

clean:
	rm -rf $(VENV) build *.egg-info
