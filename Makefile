# The two README commands are `make run` and `make test`. Both set up everything they need
# on a fresh Debian machine with a Rust toolchain: system packages, a virtualenv, the
# Cython and maturin builds, and the package itself. Re-running them is cheap: every step
# is skipped or incremental when nothing changed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
export CARDMINT_REQUIRE_NATIVE := 1
# Debian packages the builds and tests need: the Cython kernel links OpenSSL's libcrypto
# and the SQLite audit reader libsqlite3;
# the storage tests start a throwaway PostgreSQL cluster from the postgresql package.
DEBS := gcc libc6-dev libssl-dev libsqlite3-dev pkg-config postgresql

.PHONY: run test setup system-deps venv install lint rust-check pytest bench-smoke bench-ci bench-baseline bench bench-full vectors fuzz clean

## run: set up, then run the main job: the gRPC server on SQLite under ./var, 127.0.0.1:50051
run: setup
	$(VENV)/bin/cardmint serve

## test: set up, then run every check and test
test: setup lint rust-check pytest bench-smoke bench-ci

setup: system-deps install

system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo >/dev/null || { echo "cargo not found: a Rust toolchain (rustup, stable) is required"; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt

$(VENV)/.deps: requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.deps

# Always reinstalls (non-editable, like a user's install); cargo and setuptools keep their
# build caches in target/ and build/, so an unchanged tree rebuilds in seconds.
install: venv
	$(PY) -m pip install -q --no-build-isolation --no-deps . 2>&1 | { grep -v -e '^\s*$$' -e 'Running setup.py' || true; }
	$(PY) -c "import cardmint.kernel as k; assert k.available_backends() == ['rust', 'cython', 'python'], k.available_backends(); print('kernel backends:', ', '.join(k.available_backends()))"

# lint ends with mypy.stubtest: the native modules' stubs (kernel/_cy.pyi and
# rust/cardmint-py/python/cardmint/kernel/_rust.pyi) against the installed binaries, no allowlist.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) kernel/tools/gen_normtable.py --check
	$(PY) proto/generate.py --check
	$(PY) proto/gendoc.py --check
	cd /tmp && $(abspath $(PY)) -m mypy --config-file $(CURDIR)/pyproject.toml -p cardmint.kernel -p cardmint.cli -p cardmint.server -p cardmint.client
	cd /tmp && $(abspath $(PY)) -m mypy --config-file $(CURDIR)/pyproject.toml $(CURDIR)/tests
	cd /tmp && $(abspath $(PY)) -m mypy.stubtest --mypy-config-file $(CURDIR)/pyproject.toml cardmint.kernel._rust cardmint.kernel._cy cardmint.server.storage._sqlite_audit cardmint.server.storage._sqlite_writer

rust-check:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -q -- -D warnings
	cargo test --workspace --locked -q 2>&1 | grep -E "^(test result|failures|---- )" || { echo "cargo test failed"; exit 1; }

# Two pytest-xdist workers: tests/reliability on one (its tests one at a time), everything
# else on the other; the summary (reliability lines, figures) is gathered at the end. About
# half the wall time of one process on 2 cores. Then the tests marked `alone` (the load and
# overload test: it measures a server), with nothing running beside them.
pytest: install
	CARDMINT_REQUIRE_BACKENDS=rust,cython,python $(PY) -m pytest tests -n 2 --dist loadgroup --durations=15 -m "not alone"
	CARDMINT_REQUIRE_BACKENDS=rust,cython,python $(PY) -m pytest tests -m alone

# Every benchmark once, at toy sizes, so none of them can rot.
bench-smoke: install
	CARDMINT_BENCH_SIZE=tiny CARDMINT_REQUIRE_BACKENDS=rust,cython,python $(PY) -m pytest benches -q --benchmark-disable -p no:randomly

# The quick benchmark table (kernel vs plain Python, server vs echo, one run, about a minute)
# and its ratios against benches/baseline.json: regressions beyond 25% are printed loudly;
# only a ratio below a tenth of its baseline fails (docs/operations.md, "Benchmarks").
BENCH_JSON ?= build/bench-ci.json
bench-ci: install
	@mkdir -p $(dir $(BENCH_JSON))
	$(VENV)/bin/cardmint bench --ci --json $(BENCH_JSON)
	$(PY) benches/compare.py $(BENCH_JSON) --baseline benches/baseline.json

## bench-baseline: measure the quick benchmarks three times; their median ratios become the baseline (commit it)
bench-baseline: install
	@mkdir -p build
	for i in 1 2 3; do $(VENV)/bin/cardmint bench --ci --json build/bench-baseline-$$i.json; done
	$(PY) benches/compare.py --merge benches/baseline.json build/bench-baseline-1.json build/bench-baseline-2.json build/bench-baseline-3.json

## bench: the real benchmarks (pytest-benchmark groups) and the cardmint bench table
bench: setup
	$(PY) -m pytest benches --benchmark-enable --benchmark-group-by=group --benchmark-columns=min,median,ops,rounds -q
	$(VENV)/bin/cardmint bench

## fuzz: libFuzzer on the Rust core (rust/fuzz: normalize, check, correct), FUZZ_SECONDS each.
# Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz --locked`); not part of `make test` (see docs/RELIABILITY.md).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := normalize check correct
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz not found: cargo install cargo-fuzz --locked"; exit 1; }
	@rustup toolchain list | grep -q '^nightly' || { echo "no nightly toolchain: rustup toolchain install nightly"; exit 1; }
	@mkdir -p rust/fuzz/logs; for t in $(FUZZ_TARGETS); do \
	  mkdir -p rust/fuzz/corpus/$$t; \
	  cargo +nightly fuzz run --fuzz-dir rust/fuzz $$t rust/fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=4096 -print_final_stats=1 >rust/fuzz/logs/$$t.log 2>&1 || { tail -40 rust/fuzz/logs/$$t.log; exit 1; }; \
	  runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' rust/fuzz/logs/$$t.log); \
	  rate=$$(sed -n 's/^stat::average_exec_per_sec: *//p' rust/fuzz/logs/$$t.log); \
	  echo "fuzz $$t: runs=$$runs execs_per_s=$$rate seconds=$(FUZZ_SECONDS) crashes=0"; \
	done

vectors: install
	$(PY) -m cardmint.kernel.tools.gen_vectors tests/vectors

clean:
	rm -rf build target *.egg-info $(VENV)
