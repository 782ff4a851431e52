# syntax=docker/dockerfile:1
#
# The one Palisade image: `palisade controller` (the control plane), `palisade init` (the
# injected init container) and `palisade proxy` (the injected sidecar, which execs the
# proxy-only `palisade-proxy` beside it). Build: `make image`.
#
# Runtime needs of the binary: glibc, libm and libgcc_s only (rustls with aws-lc-rs is built in;
# no OpenSSL). `palisade init` additionally runs, as root in the pod's network namespace:
#   iptables-save / iptables-restore     (IPv4; `--iptables-save/--iptables-restore` choose others)
#   ip6tables-save / ip6tables-restore   (IPv6; `--ip6tables-save/--ip6tables-restore`)
# Debian's iptables package provides both families in both back-ends: the plain names point at
# the nf_tables back-end (iptables-nft-*, the default of current distributions and kernels);
# iptables-legacy-save, iptables-legacy-restore, ip6tables-legacy-save and
# ip6tables-legacy-restore are there for nodes whose kube-proxy still uses the legacy x_tables
# back-end (rules of the two back-ends must not be mixed on one node). iptables-restore --wait
# takes its lock file under /run, which is why the init container keeps a writable root
# filesystem; it needs NET_ADMIN and NET_RAW and nothing else.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

# ---- build: cargo on Debian's Rust image (same Debian release as the runtime, so the binary
# links against the glibc it will find there). protox compiles the .proto files, so no protoc;
# aws-lc-sys builds its C with the image's gcc.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
COPY tests tests
# The registry and target directories are build caches: a rebuild after a source change only
# recompiles the crate. The binary is copied out of the cache mount to stay in the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --bin palisade --bin palisade-proxy \
    && install -D -m 0755 target/release/palisade /out/palisade \
    && install -D -m 0755 target/release/palisade-proxy /out/palisade-proxy

# ---- run: Debian slim with the iptables tools and nothing else added.
FROM debian:${DEBIAN_RELEASE}-slim
ARG VERSION=dev
LABEL org.opencontainers.image.title="palisade" \
      org.opencontainers.image.description="Palisade: zero-trust service-mesh control plane, init and proxy" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# The iptables front-ends `palisade init` runs are checked here, so a missing one fails the
# build rather than a pod. uid/gid 1337 is the proxy's identity, which the iptables rules exempt
# from redirection; the passwd entry only gives it a name.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/* /var/log/apt /var/log/dpkg.log \
    && for tool in iptables-save iptables-restore ip6tables-save ip6tables-restore \
                   iptables-legacy-save iptables-legacy-restore \
                   ip6tables-legacy-save ip6tables-legacy-restore; do \
           command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; \
       done \
    && groupadd --gid 1337 palisade \
    && useradd --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent \
               --shell /usr/sbin/nologin palisade
# `palisade proxy` (what the injector runs) execs palisade-proxy from the same directory: the
# proxy alone, so the sidecar's resident memory is not the whole control plane's code.
COPY --from=build /out/palisade /out/palisade-proxy /usr/local/bin/
# Non-root by default (controller and proxy). The injected palisade-init container runs as
# root because the pod's securityContext for it says runAsUser: 0.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["--help"]
