#!/usr/bin/env bash
# Offline tests of the e2e suite's own parsing and checking logic (run by `make chart-check`,
# so by `make test`): the kind suite only runs in CI, and a helper that misreads a metric or a
# certificate would make it pass or fail for the wrong reason. kubectl and the API server's pod
# proxy are replaced by functions serving fixtures; openssl makes real certificates.
set -euo pipefail
cd "$(dirname "$0")/.."

KIND_CLUSTER=selftest
E2E_WORK_DIR="$(mktemp -d)"
E2E_KUBECONFIG="$E2E_WORK_DIR/kubeconfig"
E2E_DIAGNOSTICS="$E2E_WORK_DIR/diagnostics"
E2E_EXTRA_NAMESPACES=()
trap 'rm -rf "$E2E_WORK_DIR"' EXIT
MESH_NS=e2e-mesh
LEGACY_NS=e2e-legacy
CONTROL_NS=palisade-system
TRUST_DOMAIN=cluster.local
MANIFESTS=e2e/manifests
export KIND_CLUSTER E2E_KUBECONFIG E2E_DIAGNOSTICS MESH_NS LEGACY_NS CONTROL_NS TRUST_DOMAIN MANIFESTS

# shellcheck source=e2e/lib.sh
source e2e/lib.sh
# shellcheck source=e2e/checks.sh
source e2e/checks.sh

passed=0
check() { # DESCRIPTION EXPECTED SEEN
    [[ "$2" == "$3" ]] || {
        echo "selftest: $1: expected \"$2\", saw \"$3\"" >&2
        exit 1
    }
    passed=$((passed + 1))
}

# ---- metric_sum: label order, other labels, comments, absent metrics -----------------------
metrics='# HELP palisade_proxy_connections Connections accepted, by direction and TLS mode
# TYPE palisade_proxy_connections counter
palisade_proxy_connections_total{direction="inbound",tls="mesh"} 7
palisade_proxy_connections_total{tls="passthrough",direction="inbound"} 3
palisade_proxy_connections_total{direction="outbound",tls="passthrough"} 11
palisade_proxy_connection_failures_total{direction="inbound",reason="plaintext_refused"} 2
palisade_proxy_connection_failures_total{direction="inbound",reason="no_client_certificate"} 1
palisade_proxy_connections_total_extra{direction="inbound",tls="mesh"} 100
palisade_ca_certs_issued_total 5
# EOF'
check "mesh inbound" 7 "$(metric_sum palisade_proxy_connections_total 'direction="inbound"' 'tls="mesh"' <<<"$metrics")"
check "labels in another order" 3 "$(metric_sum palisade_proxy_connections_total 'direction="inbound"' 'tls="passthrough"' <<<"$metrics")"
check "sum over the other labels" 3 "$(metric_sum palisade_proxy_connection_failures_total 'direction="inbound"' <<<"$metrics")"
check "no labels asked" 5 "$(metric_sum palisade_ca_certs_issued_total <<<"$metrics")"
check "absent metric" 0 "$(metric_sum palisade_auth_token_reviews_total 'result="authenticated"' <<<"$metrics")"
check "absent label value" 0 "$(metric_sum palisade_proxy_connections_total 'tls="originated"' <<<"$metrics")"
check "a value is not a label" 0 "$(metric_sum palisade_proxy_connections_total 'direction="inbound",tls="mesh"}' <<<"$metrics")"

# ---- accepted_column on `kubectl get pa,dr -A` output ------------------------------------
listing='NAMESPACE   NAME                                               MODE     ACCEPTED   AGE
e2e-mesh    peerauthentication.security.palisade.dev/default   STRICT   True       2m
other       peerauthentication.security.palisade.dev/default   STRICT   False      2m

NAMESPACE   NAME                                                   HOST                              ACCEPTED   AGE
e2e-mesh    destinationrule.networking.palisade.dev/echo-plaintext   echo.e2e-mesh.svc.cluster.local   False      1m'
check "pa Accepted column" True "$(accepted_column peerauthentication default <<<"$listing")"
check "dr Accepted column" False "$(accepted_column destinationrule echo-plaintext <<<"$listing")"
check "absent policy" "" "$(accepted_column destinationrule default <<<"$listing")"

# ---- certificates: pem_bodies and check_certificate against real openssl output ------------
pki="$E2E_WORK_DIR/pki"
mkdir -p "$pki"
make_leaf() { # NAME SAN_EXTENSION
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=selftest" \
        -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    printf 'subjectAltName=%s\n' "$2" >"$pki/$1.ext"
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 1 -extfile "$pki/$1.ext" -out "$pki/$1.pem" 2>/dev/null
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=selftest root" \
    -days 1 -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=foreign root" \
    -days 1 -keyout "$pki/foreign.key" -out "$pki/foreign.pem" 2>/dev/null
make_leaf good "critical,URI:spiffe://cluster.local/ns/e2e-mesh/sa/echo"
make_leaf wrong-sa "critical,URI:spiffe://cluster.local/ns/e2e-mesh/sa/other"
make_leaf two-sans "critical,URI:spiffe://cluster.local/ns/e2e-mesh/sa/echo,DNS:echo"
make_leaf not-critical "URI:spiffe://cluster.local/ns/e2e-mesh/sa/echo"

check "one body per certificate" 2 "$(cat "$pki/ca.pem" "$pki/good.pem" | pem_bodies | grep -c .)"
check "bodies ignore wrapping" "$(pem_bodies <"$pki/ca.pem")" \
    "$( (echo '-----BEGIN CERTIFICATE-----'; grep -v -- '-----' "$pki/ca.pem" | tr -d '\n'; echo; echo '-----END CERTIFICATE-----') | pem_bodies)"

FIXTURE_CERTS=""
FIXTURE_BUNDLE=""
pod_get() { printf '%s' "$FIXTURE_CERTS"; }
k() { printf '%s' "$FIXTURE_BUNDLE"; }
certs_json() { # LEAF ROOTS [SPIFFE_ID]: the proxy's /certs document (src/proxy/admin.rs)
    jq -n --arg id "${3:-spiffe://cluster.local/ns/e2e-mesh/sa/echo}" --rawfile leaf "$pki/$1.pem" \
        --rawfile root "$pki/ca.pem" --rawfile roots "$pki/$2.pem" \
        '{certificate: {spiffe_id: $id, serial: "01", not_before: "2026-12-02T03:55:00Z",
          not_after: "2026-12-03T03:55:00Z", chain: [$leaf, $root]}, roots: [$roots]}'
}
# expect_certificate pass|fail LEAF BUNDLE [SPIFFE_ID [PROXY_ROOTS]]: check_certificate in a
# subshell, the namespace's ConfigMap holding BUNDLE, the proxy trusting PROXY_ROOTS (BUNDLE).
expect_certificate() {
    FIXTURE_CERTS="$(certs_json "$2" "${5:-$3}" "${4:-}")"
    FIXTURE_BUNDLE="$(cat "$pki/$3.pem")"
    local status=0
    (check_certificate e2e-mesh echo echo) >"$E2E_WORK_DIR/out" 2>&1 || status=$?
    if [[ "$1" == pass && $status -ne 0 ]] || [[ "$1" == fail && $status -eq 0 ]]; then
        echo "selftest: check_certificate with $2 against $3 should $1:" >&2
        cat "$E2E_WORK_DIR/out" >&2
        exit 1
    fi
    passed=$((passed + 1))
}
expect_certificate pass good ca
expect_certificate fail good foreign
expect_certificate fail wrong-sa ca
expect_certificate fail two-sans ca
expect_certificate fail not-critical ca
expect_certificate fail good ca "spiffe://cluster.local/ns/e2e-mesh/sa/other"
expect_certificate fail good ca "" foreign
FIXTURE_CERTS='{"certificate": null, "roots": []}'
(check_certificate e2e-mesh echo echo) >/dev/null 2>&1 && {
    echo "selftest: check_certificate accepts a proxy without a certificate" >&2
    exit 1
}
passed=$((passed + 1))

echo "selftest: $passed e2e helper checks pass"
