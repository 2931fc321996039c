# Entry points: make (set up), make run, make test, make test-fast, make lint, make bench,
# make system-deps (root).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: all run test test-fast test-pure lint bench system-deps wheel wheel-without-compiler clean

all: $(STAMP)

# A venv with the package installed editable; pip builds the Cython extension in place.
$(STAMP): pyproject.toml setup.py gochat/bootnode/_fastpath.pyx
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	$(BIN)/python -c "import gochat.bootnode._fastpath"  # fail here, not in the tests, if it did not compile
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gochat --mode demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The quick edit loop: everything but the tests marked slow (real processes, terminals,
# network namespaces, real-time deadlines, long simulations), and property tests with a
# tenth of their examples. `make test` still runs them all, in full.
test-fast: $(STAMP)
	GOCHAT_TEST_FAST=1 $(BIN)/python -m pytest -q -m "not slow"

# The whole suite once more with the extension disabled (the fallback users without a
# compiler get); the differential tests already run both in `make test`.
test-pure: $(STAMP)
	GOCHAT_PURE_PYTHON=1 $(BIN)/python -m pytest -q

# The gates CI runs before the tests: ruff (lint and format check) on the package, the
# tests and the benchmarks, mypy on the package (settings in pyproject.toml). Every tool
# runs, so one call shows all findings; it fails if any tool did.
lint: $(STAMP)
	@status=0; \
	$(BIN)/ruff check gochat tests benchmarks || status=1; \
	$(BIN)/ruff format --check gochat tests benchmarks || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

bench: $(STAMP)
	mkdir -p bench-results
	$(BIN)/python -m pytest -q benchmarks --benchmark-only --benchmark-columns=min,median,mean,ops,rounds
	$(BIN)/python -m benchmarks.bootnode_load --peers 100000 --seconds 5 --json bench-results/load-100k.json
	$(BIN)/python -m benchmarks.bootnode_load --peers 1000000 --seconds 5 --json bench-results/load-1m.json
	$(BIN)/python -m benchmarks.peer_latency --json bench-results/peer-latency.json
	$(BIN)/python -m benchmarks.relay_load --json bench-results/relay.json
	$(BIN)/python -m benchmarks.cluster_load --json bench-results/cluster.json
	$(BIN)/python -m benchmarks.bootnode_load --peers 20000 --seconds 4 --workers-compare --json bench-results/workers.json
	$(BIN)/python -m benchmarks.natlab_connect --json bench-results/natlab-connect.json

# The same wheel the Dockerfile builds, installed into a throwaway venv the way the
# Dockerfile's runtime stage installs it, and started once.
wheel: $(STAMP)
	rm -rf dist && $(BIN)/python -m pip wheel -q --no-deps -w dist .
	rm -rf build/wheel-venv && $(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/python -m pip install -q dist/gochat-*.whl
	cd build && wheel-venv/bin/python -c "import gochat.bootnode._fastpath, gochat.bootnode.fastpath as f; assert f.IMPLEMENTATION == 'cython' and 'wheel-venv' in f.__file__"
	build/wheel-venv/bin/gochat --version

# What `pip install .` gives where no C compiler works (CC=false): the build warns and
# goes on, and the package runs on the pure-Python fallback. Installed into a throwaway
# venv and tried: the demo (bootnode, echo bot, a client) in line mode, to the end.
wheel-without-compiler: $(STAMP)
	rm -rf build/nocc && mkdir -p build/nocc/src
	git ls-files -z | xargs -0 cp --parents -t build/nocc/src  # the sources alone: no extension built in place
	CC=false $(BIN)/python -m pip wheel -v --no-deps -w build/nocc/dist build/nocc/src > build/nocc/build.log 2>&1 \
		|| { cat build/nocc/build.log; exit 1; }
	grep -q "WARNING: gochat's compiled fast path could not be built" build/nocc/build.log
	$(PYTHON) -m venv build/nocc/venv
	build/nocc/venv/bin/python -m pip install -q build/nocc/dist/gochat-*.whl
	cd build/nocc && venv/bin/python -c "import gochat.bootnode.fastpath as f; assert f.IMPLEMENTATION == 'pure-python', f.IMPLEMENTATION"
	cd build/nocc && XDG_DATA_HOME=$$PWD/data venv/bin/gochat --mode demo --no-ui --env-file '' < /dev/null > demo.out 2> demo.err \
		|| { cat demo.err; exit 1; }
	grep -q "pure-Python fallback serves" build/nocc/demo.err
	grep -q '"event": "started"' build/nocc/demo.out

# System packages the tests use (network namespaces, NAT, terminal tests). Needs root.
system-deps:
	apt-get update
	apt-get install -y --no-install-recommends iproute2 nftables iptables tmux procps systemd coturn nats-server

clean:
	rm -rf $(VENV) build dist *.egg-info gochat/bootnode/_fastpath.c gochat/bootnode/*.so .pytest_cache .benchmarks
