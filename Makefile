# Palisade build and test entry points. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
PIP ?= python3 -m pip

.PHONY: build test lint fmt fmt-check crds crds-check tools crypto-check bench

build:
	$(CARGO) build --locked

## test: everything CI checks — formatting, lints, one crypto provider, all tests.
test: tools fmt-check lint crypto-check
	$(CARGO) test -q --locked

lint:
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

fmt-check:
	$(CARGO) fmt --check

## crds: regenerate crds/ from the API types (a test fails when they are stale).
crds:
	$(CARGO) run -q --locked -- crds --out-dir crds

## crypto-check: aws-lc-rs is the only crypto provider; `ring` must not be in the graph.
crypto-check:
	@if grep -q '^name = "ring"$$' Cargo.lock; then \
		echo "crypto-check: the ring crate is in Cargo.lock; Palisade uses aws-lc-rs only:"; \
		$(CARGO) tree --locked -i ring; exit 1; \
	fi
	@echo "crypto-check: ok (no ring in Cargo.lock)"

## tools: install what the tests need on a fresh machine (as root where packages are missing).
tools:
	@command -v $(CARGO) >/dev/null || { echo "missing: cargo (Rust toolchain, https://rustup.rs)"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "missing: rustfmt (rustup component add rustfmt)"; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "missing: clippy (rustup component add clippy)"; exit 1; }
	@command -v check-jsonschema >/dev/null || $(PIP) install --quiet 'check-jsonschema==0.39.0' || { echo "missing: check-jsonschema (pip install check-jsonschema)"; exit 1; }
	@command -v check-jsonschema >/dev/null || { echo "missing: check-jsonschema on PATH after pip install"; exit 1; }

bench:
	$(CARGO) bench --locked
