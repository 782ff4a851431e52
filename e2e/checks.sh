#!/usr/bin/env bash
# shellcheck shell=bash
# The checks of the kind end-to-end suite (sourced by e2e/run.sh after e2e/lib.sh; the step
# order lives in run.sh). A `check_*` function either establishes what its name says (and logs
# how) or calls `fail` with what it expected and what it saw. Functions without the prefix are
# predicates for `wait_for`: they run in a subshell, print what they saw, and return non-zero
# while the condition does not hold (they never call `fail`).
#
# Uses MESH_NS, LEGACY_NS, CONTROL_NS, TRUST_DOMAIN, MANIFESTS and E2E_WORK_DIR from run.sh.

readonly AGNHOST_IMAGE="registry.k8s.io/e2e-test-images/agnhost:2.53"
readonly CONTROLLER_SELECTOR="app.kubernetes.io/name=palisade,app.kubernetes.io/component=controller"
readonly ROOT_CONFIGMAP=palisade-ca-root-cert
readonly CA_SECRET=palisade-ca
readonly LEASE=palisade-controller-leader
readonly WEBHOOK=palisade-sidecar-injector
readonly ADMIN_PORT=15020
readonly MONITOR_PORT=15014

# ---- control plane -----------------------------------------------------------------------

controller_pods() {
    k -n "$CONTROL_NS" get pods -l "$CONTROLLER_SELECTOR" \
        -o 'jsonpath={range .items[*]}{.metadata.name}{"\n"}{end}'
}

lease_held() {
    local holder pods
    holder="$(jsonpath "lease/$LEASE" "$CONTROL_NS" '{.spec.holderIdentity}' 2>&1)" || {
        echo "$holder"
        return 1
    }
    pods="$(controller_pods 2>&1)" || return 1
    # holderIdentity is <pod name>_<random hex> (src/controller/leader.rs); "" when released.
    if [[ -z "$holder" ]] || ! grep -qx -- "${holder%_*}" <<<"$pods"; then
        echo "Lease $LEASE is held by \"$holder\", which is not one of the controller pods: ${pods//$'\n'/ }"
        return 1
    fi
    echo "$holder"
}

# The CA certificate in Secret palisade-ca, as PEM bodies (one line per certificate).
root_bodies() {
    local b64
    b64="$(jsonpath "secret/$CA_SECRET" "$CONTROL_NS" '{.data.ca-cert\.pem}')" || return 1
    [[ -n "$b64" ]] || {
        echo "Secret $CA_SECRET has no ca-cert.pem yet"
        return 1
    }
    base64 -d <<<"$b64" | pem_bodies
}

# Every webhook of the MutatingWebhookConfiguration trusts the CA's root (its caBundle holds
# the root certificate of Secret palisade-ca).
ca_bundle_trusts_root() {
    local root_cert bundles count i bundle
    root_cert="$(root_bodies)" || {
        echo "$root_cert"
        return 1
    }
    [[ -n "$root_cert" ]] || {
        echo "Secret $CA_SECRET holds no certificate"
        return 1
    }
    count="$(k get mutatingwebhookconfiguration "$WEBHOOK" -o json | jq '.webhooks | length')" || return 1
    ((count > 0)) || {
        echo "$WEBHOOK has no webhooks"
        return 1
    }
    for ((i = 0; i < count; i++)); do
        bundles="$(jsonpath "mutatingwebhookconfiguration/$WEBHOOK" - "{.webhooks[$i].clientConfig.caBundle}")" || return 1
        bundle="$(base64 -d <<<"$bundles" 2>/dev/null | pem_bodies)"
        while read -r line; do
            grep -qxF -- "$line" <<<"$bundle" || {
                echo "webhook $i's caBundle does not hold the CA root of Secret $CA_SECRET (caBundle has $(grep -c . <<<"$bundle") certificates)"
                return 1
            }
        done <<<"$root_cert"
    done
    echo "all $count webhooks trust the root"
}

check_control_plane() {
    k -n "$CONTROL_NS" rollout status deployment/palisade --timeout=180s >&2 ||
        fail "deployment/palisade did not roll out within 180 s"
    local ready nodes
    ready="$(jsonpath deployment/palisade "$CONTROL_NS" '{.status.readyReplicas}')"
    expect_eq "ready replicas of deployment/palisade" 2 "$ready"
    nodes="$(k -n "$CONTROL_NS" get pods -l "$CONTROLLER_SELECTOR" \
        -o 'jsonpath={range .items[*]}{.spec.nodeName}{"\n"}{end}')"
    expect_eq "distinct nodes of the 2 controller replicas (nodes: ${nodes//$'\n'/ })" 2 \
        "$(sort -u <<<"$nodes" | grep -c .)"
    wait_for 60 "a controller replica to hold Lease $LEASE" lease_held
    ok "leader: $WAIT_FOR_OUTPUT"
    wait_for 60 "Secret $CA_SECRET with the CA certificate" root_bodies
    ok "Secret $CA_SECRET holds the root"
    wait_for 60 "the webhook's caBundle to trust the CA root" ca_bundle_trusts_root
    ok "$WEBHOOK: $WAIT_FOR_OUTPUT"
}

# ---- injection ---------------------------------------------------------------------------

# A pod created with a server-side dry run in NAMESPACE comes back with the injected containers:
# the webhook is reachable, trusted by the API server and mutating.
dry_run_injected() {
    local ns="$1" out names
    out="$(out_of k -n "$ns" create --dry-run=server -o json -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: e2e-webhook-dry-run
spec:
  containers:
  - name: app
    image: $AGNHOST_IMAGE
    args: ["pause"]
EOF
    )" || {
        echo "the dry run was refused: $out"
        return 1
    }
    names="$(jq -r '[.spec.initContainers[]?.name] | join(" ")' <<<"$out" 2>&1)" || {
        echo "not JSON: $out"
        return 1
    }
    [[ "$names" == "palisade-init palisade-proxy" ]] || {
        echo "init containers after admission: \"$names\" (expected \"palisade-init palisade-proxy\")"
        return 1
    }
}

check_injected() {
    local ns="$1" pod="$2" json names policy label status injected
    json="$(k -n "$ns" get pod "$pod" -o json)" || fail "cannot read pod $ns/$pod"
    names="$(jq -r '[.spec.initContainers[]?.name] | join(" ")' <<<"$json")"
    expect_eq "init containers of $ns/$pod" "palisade-init palisade-proxy" "$names"
    policy="$(jq -r '.spec.initContainers[] | select(.name == "palisade-proxy") | .restartPolicy // ""' <<<"$json")"
    expect_eq "restartPolicy of $ns/$pod's palisade-proxy (a native sidecar)" Always "$policy"
    names="$(jq -r '[.spec.containers[].name] | join(" ")' <<<"$json")"
    expect_eq "app containers of $ns/$pod (the injector adds none)" "$pod" "$names"
    label="$(jq -r '.metadata.labels["security.palisade.dev/tlsMode"] // ""' <<<"$json")"
    expect_eq "label security.palisade.dev/tlsMode of $ns/$pod" palisade "$label"
    status="$(jq -r '.metadata.annotations["sidecar.palisade.dev/status"] // ""' <<<"$json")"
    [[ -n "$status" ]] || fail "pod $ns/$pod has no annotation sidecar.palisade.dev/status"
    injected="$(jq -r '.initContainers | join(" ")' <<<"$status" 2>&1)" ||
        fail "annotation sidecar.palisade.dev/status of $ns/$pod is not the expected JSON: $status"
    expect_eq "initContainers in $ns/$pod's sidecar.palisade.dev/status" "palisade-init palisade-proxy" "$injected"
    ok "$ns/$pod injected: status $status"
}

check_not_injected() {
    local ns="$1" pod="$2" json seen
    json="$(k -n "$ns" get pod "$pod" -o json)" || fail "cannot read pod $ns/$pod"
    seen="$(jq -r '[(.spec.initContainers[]?.name), (.metadata.labels // {} | keys[] | select(startswith("security.palisade.dev/"))), (.metadata.annotations // {} | keys[] | select(startswith("sidecar.palisade.dev/")))] | join(" ")' <<<"$json")"
    expect_eq "injected containers, labels and annotations of $ns/$pod (namespace not meshed)" "" "$seen"
    ok "$ns/$pod left alone"
}

app_logged_readyz() {
    local log
    log="$(k -n "$MESH_NS" logs echo -c echo 2>&1)" || {
        echo "$log"
        return 1
    }
    grep -q 'GET /readyz' <<<"$log" || {
        echo "the echo app has not logged a GET /readyz; its log ends with: $(tail -n 5 <<<"$log")"
        return 1
    }
}

check_ready_through_proxy() {
    local pod probe
    for pod in "$MESH_NS/echo" "$MESH_NS/client" "$LEGACY_NS/legacy"; do
        k -n "${pod%/*}" wait --for=condition=Ready "pod/${pod#*/}" --timeout=180s >&2 ||
            fail "pod $pod did not become Ready within 180 s"
    done
    local field endpoint
    for probe in "readinessProbe readyz" "livenessProbe livez"; do
        read -r field endpoint <<<"$probe"
        expect_eq "$field of $MESH_NS/echo's app container (path port)" "/app-health/echo/$endpoint $ADMIN_PORT" \
            "$(jsonpath pod/echo "$MESH_NS" "{.spec.containers[?(@.name==\"echo\")].$field.httpGet.path} {.spec.containers[?(@.name==\"echo\")].$field.httpGet.port}")"
    done
    # The kubelet now probes the proxy; the app still sees the probe, so the proxy ran it.
    wait_for 30 "the echo app to receive its readiness probe from the proxy" app_logged_readyz
    ok "echo, client and legacy are Ready; echo's probes go to :$ADMIN_PORT/app-health and reach the app"
}

# ---- identity ----------------------------------------------------------------------------

# check_certificate NAMESPACE POD SERVICE_ACCOUNT: the proxy's /certs names the pod's SPIFFE ID,
# and its chain verifies against the namespace's trust bundle with that ID as the only SAN.
check_certificate() {
    local ns="$1" pod="$2" sa="$3" json id serial dir verify san header values
    local expected="spiffe://$TRUST_DOMAIN/ns/$ns/sa/$sa"
    json="$(out_of pod_get "$ns" "$pod" "$ADMIN_PORT" /certs)" || fail "GET :$ADMIN_PORT/certs of $ns/$pod failed: $json"
    # {"certificate": {"spiffe_id", "serial", "not_before", "not_after", "chain"}, "roots": [...]}
    id="$(jq -r '.certificate.spiffe_id // ""' <<<"$json" 2>&1)" || fail "/certs of $ns/$pod is not JSON: $json"
    expect_eq "certificate.spiffe_id in /certs of $ns/$pod" "$expected" "$id"
    serial="$(jq -r '.certificate.serial // ""' <<<"$json")"
    [[ -n "$serial" ]] || fail "/certs of $ns/$pod has no certificate.serial: $json"

    dir="$E2E_WORK_DIR/certs/$ns-$pod"
    rm -rf "$dir"
    mkdir -p "$dir"
    jq -r '.certificate.chain | if type == "array" then .[] elif type == "string" then . else empty end' \
        <<<"$json" >"$dir/chain.pem"
    awk '/-----BEGIN CERTIFICATE-----/ { n++ } n == 1 { print > leaf } n > 1 { print > rest }' \
        leaf="$dir/leaf.pem" rest="$dir/rest.pem" "$dir/chain.pem"
    [[ -s "$dir/leaf.pem" ]] || fail "/certs of $ns/$pod has no certificate in \"chain\": $json"
    k -n "$ns" get configmap "$ROOT_CONFIGMAP" -o 'jsonpath={.data.root-cert\.pem}' >"$dir/bundle.pem" ||
        fail "cannot read ConfigMap $ns/$ROOT_CONFIGMAP"
    # The proxy trusts the bundle its namespace's ConfigMap carries.
    expect_eq "trust roots in /certs of $ns/$pod (as PEM bodies) vs ConfigMap $ns/$ROOT_CONFIGMAP" \
        "$(pem_bodies <"$dir/bundle.pem" | sort)" \
        "$(jq -r '.roots | if type == "array" then .[] elif type == "string" then . else empty end' <<<"$json" | pem_bodies | sort)"
    local args=(-CAfile "$dir/bundle.pem")
    [[ -s "$dir/rest.pem" ]] && args+=(-untrusted "$dir/rest.pem")
    verify="$(openssl verify "${args[@]}" "$dir/leaf.pem" 2>&1)" ||
        fail "the certificate of $ns/$pod's proxy does not verify against the trust bundle of $ns: $verify"
    san="$(openssl x509 -in "$dir/leaf.pem" -noout -ext subjectAltName 2>&1)" ||
        fail "cannot read the SAN of $ns/$pod's certificate: $san"
    header="$(head -n 1 <<<"$san")"
    values="$(tail -n +2 <<<"$san" | tr -d ' ')"
    [[ "$header" == *critical* ]] || fail "the SAN extension of $ns/$pod's certificate is not critical: $san"
    expect_eq "SANs of $ns/$pod's certificate" "URI:$expected" "$values"
    ok "$ns/$pod holds $expected (serial $serial), verified against the trust bundle"
}

# check_issuance_metrics MIN: summed over the controller replicas, at least MIN TokenReviews said
# "authenticated" and at least MIN workload certificates were issued (one per meshed pod: each
# pod's first request can only authenticate with its token).
check_issuance_metrics() {
    local min="$1" pod text reviews=0 issued=0 r i
    for pod in $(controller_pods); do
        text="$(out_of pod_get "$CONTROL_NS" "$pod" "$MONITOR_PORT" /metrics)" ||
            fail "GET :$MONITOR_PORT/metrics of $CONTROL_NS/$pod failed: $text"
        r="$(metric_sum palisade_auth_token_reviews_total 'result="authenticated"' <<<"$text")"
        i="$(metric_sum palisade_ca_certs_issued_total <<<"$text")"
        log "$pod: palisade_auth_token_reviews_total{result=\"authenticated\"} $r, palisade_ca_certs_issued_total $i"
        reviews=$((reviews + r))
        issued=$((issued + i))
    done
    ((reviews >= min)) ||
        fail "expected at least $min authenticated TokenReviews (palisade_auth_token_reviews_total{result=\"authenticated\"}, all replicas), saw $reviews"
    ((issued >= min)) ||
        fail "expected at least $min issued certificates (palisade_ca_certs_issued_total, all replicas), saw $issued"
    ok "$reviews authenticated TokenReviews, $issued certificates issued"
}

# check_root_configmap_in_new_namespace NAMESPACE LIMIT_MS
check_root_configmap_in_new_namespace() {
    local ns="$1" limit="$2" start elapsed bundle reference root_cert label
    E2E_EXTRA_NAMESPACES+=("$ns")
    start="$(now_ms)"
    k create namespace "$ns" >&2
    until k -n "$ns" get configmap "$ROOT_CONFIGMAP" >/dev/null 2>&1; do
        elapsed=$(($(now_ms) - start))
        ((elapsed < limit)) ||
            fail "ConfigMap $ROOT_CONFIGMAP did not appear in the new namespace $ns within $limit ms (gave up after $elapsed ms)"
        sleep 0.2
    done
    elapsed=$(($(now_ms) - start))
    bundle="$(jsonpath "configmap/$ROOT_CONFIGMAP" "$ns" '{.data.root-cert\.pem}')"
    reference="$(jsonpath "configmap/$ROOT_CONFIGMAP" "$MESH_NS" '{.data.root-cert\.pem}')"
    [[ -n "$bundle" && "$bundle" == "$reference" ]] ||
        fail "root-cert.pem in $ns differs from the one in $MESH_NS:
--- $ns
$bundle
--- $MESH_NS
$reference"
    root_cert="$(root_bodies)" || fail "cannot read the CA root from Secret $CA_SECRET: $root_cert"
    grep -qxF -- "$root_cert" <<<"$(pem_bodies <<<"$bundle")" ||
        fail "root-cert.pem in $ns does not hold the CA certificate of Secret $CONTROL_NS/$CA_SECRET"
    label="$(jsonpath "configmap/$ROOT_CONFIGMAP" "$ns" '{.metadata.labels.app\.kubernetes\.io/managed-by}')"
    expect_eq "label app.kubernetes.io/managed-by of $ns/$ROOT_CONFIGMAP" palisade "$label"
    ok "$ns/$ROOT_CONFIGMAP appeared after $elapsed ms (limit $limit ms) and holds the CA root"
}

# ---- traffic -----------------------------------------------------------------------------

readonly ECHO_URL="http://echo.e2e-mesh.svc.cluster.local:8080/hostname"

# call_echo NAMESPACE POD: GET the server's hostname through its Service from POD's container
# (named like the pod). curl fails on a refused, reset or empty connection.
call_echo() {
    k -n "$1" exec "$2" -c "$2" -- curl -sS --max-time 5 "$ECHO_URL"
}

# echo_metric NAME LABEL="VALUE"...: a counter of the server's proxy.
echo_metric() {
    local text
    text="$(out_of pod_get "$MESH_NS" echo "$ADMIN_PORT" /metrics)" || {
        echo "cannot read :$ADMIN_PORT/metrics of $MESH_NS/echo: $text" >&2
        return 1
    }
    metric_sum "$@" <<<"$text"
}

# reached_with mesh|passthrough NAMESPACE POD: one call gets the server's answer, and the
# server's proxy counted exactly that kind of inbound connection for it (mesh: mutual TLS
# terminated by the proxy; passthrough: plaintext handed on untouched).
reached_with() {
    local tls="$1" ns="$2" pod="$3" answer mesh0 pass0 mesh1 pass1
    mesh0="$(echo_metric palisade_proxy_connections_total 'direction="inbound"' 'tls="mesh"')" || return 1
    pass0="$(echo_metric palisade_proxy_connections_total 'direction="inbound"' 'tls="passthrough"')" || return 1
    answer="$(out_of call_echo "$ns" "$pod")" || {
        echo "the call from $ns/$pod failed: ${answer//$'\n'/ }"
        return 1
    }
    [[ "$answer" == echo ]] || {
        echo "the call from $ns/$pod answered \"$answer\", expected the server's hostname \"echo\""
        return 1
    }
    mesh1="$(echo_metric palisade_proxy_connections_total 'direction="inbound"' 'tls="mesh"')" || return 1
    pass1="$(echo_metric palisade_proxy_connections_total 'direction="inbound"' 'tls="passthrough"')" || return 1
    local seen="server proxy inbound connections: tls=mesh $mesh0 -> $mesh1, tls=passthrough $pass0 -> $pass1"
    case "$tls" in
    mesh) ((mesh1 > mesh0 && pass1 == pass0)) || {
        echo "the call succeeded but was not mesh mTLS: $seen"
        return 1
    } ;;
    passthrough) ((pass1 > pass0 && mesh1 == mesh0)) || {
        echo "the call succeeded but was not plaintext through the proxy: $seen"
        return 1
    } ;;
    esac
    echo "answer \"$answer\"; $seen"
}

check_reaches_over_mtls() {
    wait_for 60 "$1/$2 to reach the server over mesh mTLS" reached_with mesh "$1" "$2"
    ok "$1/$2 -> echo over mTLS: $WAIT_FOR_OUTPUT"
}

check_reaches_in_plaintext() {
    wait_for 60 "$1/$2 to reach the server in plaintext" reached_with passthrough "$1" "$2"
    ok "$1/$2 -> echo in plaintext: $WAIT_FOR_OUTPUT"
}

# refused_once NAMESPACE POD: one call fails, and the server's proxy counted a refused inbound
# connection for it (so the refusal is the proxy's, not a broken network).
refused_once() {
    local ns="$1" pod="$2" answer failures0 failures1
    failures0="$(echo_metric palisade_proxy_connection_failures_total 'direction="inbound"')" || return 1
    if answer="$(out_of call_echo "$ns" "$pod")"; then
        echo "the call from $ns/$pod succeeded (answer \"$answer\")"
        return 1
    fi
    failures1="$(echo_metric palisade_proxy_connection_failures_total 'direction="inbound"')" || return 1
    ((failures1 > failures0)) || {
        echo "the call failed (${answer//$'\n'/ }) but the server's proxy counted no refused inbound connection ($failures0 -> $failures1)"
        return 1
    }
    echo "refused (${answer//$'\n'/ }); server proxy inbound failures $failures0 -> $failures1"
}

# check_refused NAMESPACE POD WHAT: refused once the policy is in force, and on every try after.
check_refused() {
    local ns="$1" pod="$2" what="$3" attempt out
    wait_for 60 "$what to be refused by the server's proxy" refused_once "$ns" "$pod"
    ok "$what: $WAIT_FOR_OUTPUT"
    for attempt in 1 2 3; do
        out="$(refused_once "$ns" "$pod")" || fail "$what: try $attempt after the first refusal was not refused: $out"
    done
    ok "$what: refused on 3 more tries"
}

# ---- policies ----------------------------------------------------------------------------

# policy_accepted KIND NAME: status says Accepted=True for the object's current generation.
policy_accepted() {
    local kind="$1" name="$2" json accepted reason generation observed
    json="$(out_of k -n "$MESH_NS" get "$kind" "$name" -o json)" || {
        echo "$json"
        return 1
    }
    accepted="$(jq -r '[.status.conditions[]? | select(.type == "Accepted")][0].status // ""' <<<"$json")"
    reason="$(jq -r '[.status.conditions[]? | select(.type == "Accepted")][0].reason // ""' <<<"$json")"
    generation="$(jq -r '.metadata.generation' <<<"$json")"
    observed="$(jq -r '.status.observedGeneration // ""' <<<"$json")"
    [[ "$accepted" == True && "$observed" == "$generation" ]] || {
        echo "Accepted=\"$accepted\" (reason \"$reason\"), status.observedGeneration \"$observed\", metadata.generation $generation; conditions: $(jq -c '.status.conditions // []' <<<"$json")"
        return 1
    }
    echo "Accepted=True ($reason) for generation $generation"
}

# apply_policy FILE KIND NAME: applies e2e/manifests/FILE and waits until the controller has
# judged the new generation.
apply_policy() {
    local file="$1" kind="$2" name="$3"
    k apply -f "$MANIFESTS/$file" >&2
    wait_for 60 "$kind $MESH_NS/$name to be Accepted for its current generation" policy_accepted "$kind" "$name"
    ok "$kind $MESH_NS/$name: $WAIT_FOR_OUTPUT"
}

# accepted_column KIND NAME: the ACCEPTED column of KIND MESH_NS/NAME in `kubectl get pa,dr -A`
# output on stdin (names there are prefixed with the resource, e.g. peerauthentication.<group>/).
accepted_column() {
    awk -v ns="$MESH_NS" -v kind="$1" -v name="$2" '
        $1 == "NAMESPACE" { col = 0; for (i = 1; i <= NF; i++) if ($i == "ACCEPTED") col = i; next }
        col && $1 == ns && ($2 == name || (index($2, kind ".") == 1 &&
            substr($2, length($2) - length(name)) == "/" name)) { print $col; exit }'
}

check_policy_listing() {
    local listing kind name
    listing="$(out_of k get pa,dr -A)" || fail "kubectl get pa,dr -A failed: $listing"
    printf '%s\n' "$listing" >&2
    for kind in "peerauthentication default" "destinationrule echo-plaintext"; do
        name="${kind#* }"
        kind="${kind% *}"
        expect_eq "ACCEPTED column of $kind $MESH_NS/$name in \`kubectl get pa,dr -A\`" True \
            "$(accepted_column "$kind" "$name" <<<"$listing")"
        policy_accepted "$kind" "$name" >/dev/null ||
            fail "$kind $MESH_NS/$name: $(policy_accepted "$kind" "$name")"
    done
    ok "both policies show Accepted True, with conditions for their current generation"
}

# ---- upgrade -----------------------------------------------------------------------------

pod_gone() {
    local out
    out="$(k -n "$1" get pod "$2" --ignore-not-found -o name 2>&1)" || {
        echo "$out"
        return 1
    }
    [[ -z "$out" ]] || {
        echo "$out still exists"
        return 1
    }
}

# Saves the root as pods see it (ConfigMap in MESH_NS) and the CA certificate (Secret, base64 as
# stored; the key is never read) into DIR.
save_root() {
    local dir="$1"
    mkdir -p "$dir"
    k -n "$MESH_NS" get configmap "$ROOT_CONFIGMAP" -o 'jsonpath={.data.root-cert\.pem}' >"$dir/root-cert.pem" ||
        fail "cannot read ConfigMap $MESH_NS/$ROOT_CONFIGMAP"
    k -n "$CONTROL_NS" get secret "$CA_SECRET" -o 'jsonpath={.data.ca-cert\.pem}' >"$dir/ca-cert.pem.b64" ||
        fail "cannot read Secret $CONTROL_NS/$CA_SECRET"
    [[ -s "$dir/root-cert.pem" && -s "$dir/ca-cert.pem.b64" ]] || fail "the root ConfigMap or the CA Secret is empty"
}

check_upgrade_keeps_root() {
    local before="$E2E_WORK_DIR/upgrade/before" after="$E2E_WORK_DIR/upgrade/after"
    local old_pods new_pods pod revision level
    save_root "$before"
    old_pods="$(controller_pods)"
    log "root before: $(base64 -d <"$before/ca-cert.pem.b64" | openssl x509 -noout -serial -enddate | tr '\n' ' ')"

    h upgrade palisade "$ROOT/charts/palisade" --namespace "$CONTROL_NS" --wait --timeout 5m0s \
        "${HELM_VALUES[@]}" --set logLevel=debug >&2 ||
        fail "helm upgrade failed or the release did not become ready within 5 minutes (helm's output is above)"
    revision="$(h status palisade -n "$CONTROL_NS" -o json | jq -r '.version')"
    expect_eq "release revision after helm upgrade" 2 "$revision"
    level="$(jsonpath deployment/palisade "$CONTROL_NS" '{.spec.template.spec.containers[0].env[?(@.name=="RUST_LOG")].value}')"
    expect_eq "RUST_LOG of the upgraded deployment" debug "$level"
    k -n "$CONTROL_NS" rollout status deployment/palisade --timeout=180s >&2 ||
        fail "deployment/palisade did not roll out after the upgrade"
    for pod in $old_pods; do
        wait_for 120 "the pre-upgrade controller pod $pod to be gone" pod_gone "$CONTROL_NS" "$pod"
    done
    new_pods="$(controller_pods)"
    expect_eq "controller pods after the upgrade" 2 "$(grep -c . <<<"$new_pods")"
    ok "every replica replaced: ${old_pods//$'\n'/ } -> ${new_pods//$'\n'/ }"

    wait_for 60 "a new controller replica to hold Lease $LEASE" lease_held
    wait_for 60 "the webhook's caBundle to trust the CA root after the upgrade" ca_bundle_trusts_root
    save_root "$after"
    cmp -s "$before/ca-cert.pem.b64" "$after/ca-cert.pem.b64" ||
        fail "the CA certificate in Secret $CONTROL_NS/$CA_SECRET changed across the upgrade:
before: $(base64 -d <"$before/ca-cert.pem.b64" | openssl x509 -noout -serial -enddate 2>&1 | tr '\n' ' ')
after:  $(base64 -d <"$after/ca-cert.pem.b64" | openssl x509 -noout -serial -enddate 2>&1 | tr '\n' ' ')"
    cmp -s "$before/root-cert.pem" "$after/root-cert.pem" ||
        fail "ConfigMap $MESH_NS/$ROOT_CONFIGMAP changed across the upgrade:
--- before
$(cat "$before/root-cert.pem")
--- after
$(cat "$after/root-cert.pem")"
    ok "the CA certificate and the root ConfigMap are byte-identical before and after the upgrade"
}

check_no_restarts() {
    local pod restarted
    for pod in "$MESH_NS/echo" "$MESH_NS/client" "$LEGACY_NS/legacy"; do
        restarted="$(k -n "${pod%/*}" get pod "${pod#*/}" -o json |
            jq -r '[(.status.initContainerStatuses // [])[], (.status.containerStatuses // [])[] | select(.restartCount > 0) | "\(.name) restarted \(.restartCount) times"] | join(", ")')"
        expect_eq "restarts in $pod" "" "$restarted"
    done
    ok "no restarts in echo, client and legacy"
}
