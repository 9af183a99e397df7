# condor-relay: `make demo` and `make test` bootstrap everything they need in .venv;
# `make bench` uses .venv-bench, a regular (not editable) install, as users have it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
SOURCES := $(shell find relayd clientconf -name '*.py' -o -name '*.sh') scripts/condor-relay-connect

VERSION := $(shell sed -n 's/^version = //p' setup.cfg)
DIST := dist
WHEEL := $(DIST)/condor_relay-$(VERSION)-py3-none-any.whl
RPM_TOPDIR := $(CURDIR)/build/rpm
RPM_SRC := $(CURDIR)/build/rpm-src
# Off EL, rpmbuild cannot see the build dependency (python3.11) in its empty rpm database.
RPM_FLAGS := $(if $(wildcard /etc/redhat-release),,--nodeps --define "python_bin $(or $(RPM_PYTHON),/usr/bin/python3)")

.PHONY: demo test bench check-system clean wheel rpm

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

# The wheel, with the standard build front end (an isolated build env, as pipx and pip do).
wheel: $(WHEEL)
$(WHEEL): $(STAMP) $(SOURCES) setup.cfg pyproject.toml
	@$(VENV)/bin/python -m build --wheel --outdir $(DIST) . >$(DIST).log 2>&1 || { cat $(DIST).log >&2; exit 1; }
	@rm -f $(DIST).log

# The RPM for EL 8/9 (contrib/condor-relay.spec): the wheel, its dependencies' wheels, the units.
rpm: $(WHEEL)
	rm -rf $(RPM_SRC) $(RPM_TOPDIR)/RPMS && mkdir -p $(RPM_SRC)
	$(VENV)/bin/pip download --quiet --only-binary=:all: --dest $(RPM_SRC)/wheels $(WHEEL) 2>/dev/null
	rm -f $(RPM_SRC)/wheels/condor_relay-*.whl
	tar -C $(RPM_SRC) -czf $(RPM_SRC)/condor-relay-wheels-$(VERSION).tar.gz wheels
	cp $(WHEEL) contrib/system/condor-relay.socket contrib/system/condor-relay.service \
	    contrib/system/config.yaml $(RPM_SRC)/
	rpmbuild -bb --quiet $(RPM_FLAGS) --define "_topdir $(RPM_TOPDIR)" --define "_sourcedir $(RPM_SRC)" \
	    contrib/condor-relay.spec 2>&1 | grep -v '^warning: absolute symlink' || true
	@ls $(RPM_TOPDIR)/RPMS/*/condor-relay-$(VERSION)-*.rpm

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist *.egg-info .pytest_cache
