# condor-relay: `make demo` and `make test` bootstrap everything they need in .venv.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench check-system clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "make: cannot create a venv; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2; exit 1; }
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $@

check-system:
	@sh contrib/check-system.sh

demo: check-system $(STAMP)
	$(VENV)/bin/python contrib/demo.py

test: check-system $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
