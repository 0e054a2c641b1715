# Every target creates .venv and installs what it needs, idempotently (stamp files track setup.cfg).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench soak pyepics-suite clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

$(VENV)/.stamp-base: setup.cfg pyproject.toml | $(PY)
	$(PIP) install -e . tqdm
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PIP) install -e '.[test]'
	touch $@

$(VENV)/.stamp-bench: $(VENV)/.stamp-base
	$(PIP) install -e '.[bench]' || $(PIP) install pyepics
	touch $@

demo: $(VENV)/.stamp-base
	$(PY) -m capar.demo

test: $(VENV)/.stamp-test
	$(PY) -m pytest -q -m "not soak" tests

soak: $(VENV)/.stamp-test
	$(PY) -m pytest -q -s -m soak tests

pyepics-suite: $(VENV)/.stamp-test
	CAPAR_PYEPICS_SUITE=all $(PY) -m pytest -q tests/test_pyepics_suite.py

bench: $(VENV)/.stamp-bench
	$(PY) bench/run.py
	$(PY) bench/coordinator_bench.py
	$(PY) bench/monitor_bench.py --n 1000,5000
	$(PY) bench/monitor_bench.py --n 20000 --clients C,capar,capar_k2
	$(PY) bench/startup_bench.py
	$(PY) bench/multi_ioc_bench.py
	$(PY) bench/dask_bench.py
	$(PY) bench/files_bench.py
	$(PY) bench/multi_ioc_bench.py --iocs 1 --pvs 20000

clean:
	rm -rf $(VENV) build *.egg-info
