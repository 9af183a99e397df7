# condor-relay: `make demo` and `make test` bootstrap everything they need in .venv;
# `make bench` uses .venv-bench, a regular (not editable) install, as users have it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
SOURCES := $(wildcard relayd/*.py relayd/sandbox/*.py relayd/sandbox/*.sh clientconf/*.py) scripts/condor-relay-connect

.PHONY: demo test bench check-system clean

$(STAMP): setup.cfg pyproject.toml scripts/condor-relay-connect
	@$(PYTHON) -m venv $(VENV) || { echo "make: cannot create a venv; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2; exit 1; }
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $@

$(BENCH_STAMP): setup.cfg pyproject.toml $(SOURCES)
	@$(PYTHON) -m venv $(BENCH_VENV) || { echo "make: cannot create a venv; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2; exit 1; }
	$(BENCH_VENV)/bin/pip install --quiet '.[test,bench]'
	@touch $@

check-system:
	@sh contrib/check-system.sh

demo: check-system $(STAMP)
	$(VENV)/bin/python contrib/demo.py

test: check-system $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: check-system $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info .pytest_cache
