# Palisade build and test entry points. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
PIP ?= python3 -m pip

.PHONY: build test lint fmt fmt-check crds crds-check tools tools-netns crypto-check bench

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
tools: tools-netns
	@command -v $(CARGO) >/dev/null || { echo "missing: cargo (Rust toolchain, https://rustup.rs)"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "missing: rustfmt (rustup component add rustfmt)"; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "missing: clippy (rustup component add clippy)"; exit 1; }
	@command -v check-jsonschema >/dev/null || $(PIP) install --quiet 'check-jsonschema==0.39.0' || { echo "missing: check-jsonschema (pip install check-jsonschema)"; exit 1; }
	@command -v check-jsonschema >/dev/null || { echo "missing: check-jsonschema on PATH after pip install"; exit 1; }

## tools-netns: iptables, ip and setpriv for the `palisade init` network-namespace test. As root
## on Debian/Ubuntu they are installed; otherwise the missing ones are named. With
## PALISADE_SKIP_NETNS=1 the test is skipped (loudly), so nothing is required.
NETNS_TOOLS := iptables-save iptables-restore ip setpriv
NETNS_PACKAGES := iptables iproute2 util-linux
tools-netns:
	@if [ "$${PALISADE_SKIP_NETNS:-}" = 1 ]; then echo "tools-netns: PALISADE_SKIP_NETNS=1, not checking $(NETNS_TOOLS)"; exit 0; fi; \
	missing=""; for t in $(NETNS_TOOLS); do PATH="$$PATH:/usr/sbin:/sbin" command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "tools-netns: installing $(NETNS_PACKAGES) (missing:$$missing)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q $(NETNS_PACKAGES) >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q $(NETNS_PACKAGES) >/dev/null; } || \
		{ echo "missing:$$missing (apt-get install $(NETNS_PACKAGES) failed)"; exit 1; }; \
		still=""; for t in $$missing; do PATH="$$PATH:/usr/sbin:/sbin" command -v $$t >/dev/null || still="$$still $$t"; done; \
		[ -z "$$still" ] || { echo "missing after installing $(NETNS_PACKAGES):$$still"; exit 1; }; \
	else \
		echo "missing:$$missing (as root: apt-get install -y $(NETNS_PACKAGES); or set PALISADE_SKIP_NETNS=1 to skip the network-namespace test)"; \
		exit 1; \
	fi

bench:
	$(CARGO) bench --locked
