#!/usr/bin/env bash
# The kind end-to-end suite (`make e2e`; e2e/README.md says what it proves and how to read a
# failure). It creates its own kind cluster, builds and loads the image, installs the chart and
# checks, step by named step, what a user of Palisade would check by hand. It never touches
# another cluster: kubectl and helm use the suite's own kubeconfig and the cluster's context.
#
# Knobs (environment):
#   KIND_CLUSTER      name of the kind cluster to create (default palisade-e2e); it must not exist
#   KEEP_CLUSTER=1    keep the cluster afterwards (passed or failed) to look around
#   IMAGE             image reference repository:tag to build and load (default
#                     palisade.test/palisade:e2e: a name no registry serves, loaded into the nodes
#                     and never pulled)
#   E2E_SKIP_BUILD=1  use IMAGE as it is in the local Docker instead of `make image`
#   E2E_WORK_DIR      where the kubeconfig and diagnostics go (default target/e2e)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

KIND_CLUSTER="${KIND_CLUSTER:-palisade-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
IMAGE="${IMAGE:-palisade.test/palisade:e2e}"
E2E_SKIP_BUILD="${E2E_SKIP_BUILD:-0}"
E2E_WORK_DIR="${E2E_WORK_DIR:-$ROOT/target/e2e}"
E2E_DIAGNOSTICS="$E2E_WORK_DIR/diagnostics"
E2E_KUBECONFIG="$E2E_WORK_DIR/kubeconfig"
E2E_EXTRA_NAMESPACES=()
MANIFESTS="$ROOT/e2e/manifests"

# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
# shellcheck source=e2e/checks.sh
source "$ROOT/e2e/checks.sh"

readonly CONTROL_NS=palisade-system
readonly MESH_NS=e2e-mesh
readonly LEGACY_NS=e2e-legacy
readonly NEW_NS=e2e-new-namespace
readonly TRUST_DOMAIN=cluster.local

# ---- preflight ---------------------------------------------------------------------------

step "preflight: tools and settings"
missing=()
for tool in docker kind kubectl helm jq openssl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    fail "missing on PATH: ${missing[*]}
The suite needs docker (a running daemon), kind, kubectl, helm, jq and openssl; the versions CI
uses are pinned in .github/workflows/e2e.yml (see e2e/README.md)."
fi
docker info >/dev/null 2>&1 ||
    fail "docker is on PATH but no Docker daemon answers (is it running, and may this user use it?)"
[[ "$KIND_CLUSTER" =~ ^[a-z0-9][a-z0-9-]{0,40}$ ]] ||
    fail "KIND_CLUSTER=\"$KIND_CLUSTER\": use lowercase letters, digits and dashes (at most 41)"
[[ "$IMAGE" != *@* && "${IMAGE##*/}" == *:* ]] ||
    fail "IMAGE=\"$IMAGE\": give repository:tag (no digest); the chart gets them as image.repository and image.tag"
IMAGE_REPOSITORY="${IMAGE%:*}"
IMAGE_TAG="${IMAGE##*:}"
if kind get clusters 2>/dev/null | grep -qx -- "$KIND_CLUSTER"; then
    fail "a kind cluster named \"$KIND_CLUSTER\" already exists (a run with KEEP_CLUSTER=1?).
The suite only deletes clusters it created: delete it with \`kind delete cluster --name $KIND_CLUSTER\`
or choose another KIND_CLUSTER."
fi
rm -rf "$E2E_DIAGNOSTICS"
mkdir -p "$E2E_WORK_DIR"
ok "docker $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
ok "$(kind version)"
ok "kubectl $(kubectl version --client -o json | jq -r .clientVersion.gitVersion)"
ok "helm $(helm version --short)"

# ---- cleanup: diagnostics on failure, then the cluster goes (unless KEEP_CLUSTER=1) ---------

CLUSTER_CREATED=0
finish() {
    local status=$?
    trap - EXIT
    if ((status != 0 && CLUSTER_CREATED)); then
        dump_diagnostics
    fi
    if ((CLUSTER_CREATED)); then
        if [[ "$KEEP_CLUSTER" == 1 ]]; then
            log "KEEP_CLUSTER=1: the cluster stays; use it with: export KUBECONFIG=$E2E_KUBECONFIG"
            log "delete it with: kind delete cluster --name $KIND_CLUSTER"
        else
            log "deleting kind cluster $KIND_CLUSTER"
            kind delete cluster --name "$KIND_CLUSTER" --kubeconfig "$E2E_KUBECONFIG" >&2 ||
                log "could not delete kind cluster $KIND_CLUSTER; delete it with: kind delete cluster --name $KIND_CLUSTER"
        fi
    fi
    if ((status == 0)); then
        log "PASSED: all $E2E_STEP_NUMBER steps"
    else
        log "FAILED (exit status $status) in step $E2E_STEP_NUMBER: $E2E_STEP; diagnostics: $E2E_DIAGNOSTICS"
    fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- cluster, image, chart ---------------------------------------------------------------

step "create kind cluster $KIND_CLUSTER (1 control plane, 2 workers)"
# Marked before creating: a half-created cluster of this (checked to be new) name is ours too.
CLUSTER_CREATED=1
kind create cluster --name "$KIND_CLUSTER" --config "$ROOT/e2e/kind.yaml" \
    --kubeconfig "$E2E_KUBECONFIG" --wait 180s >&2 || fail "kind create cluster failed (its output is above)"
k wait --for=condition=Ready nodes --all --timeout=120s >&2 ||
    fail "the nodes did not become Ready within 120 s"
nodes="$(k get nodes --no-headers | wc -l)"
expect_eq "number of nodes" 3 "$((nodes))"
ok "3 nodes Ready"

if [[ "$E2E_SKIP_BUILD" == 1 ]]; then
    step "use the local image $IMAGE (E2E_SKIP_BUILD=1)"
else
    step "build the image $IMAGE (make image)"
    make -C "$ROOT" --no-print-directory image IMAGE="$IMAGE" >&2 ||
        fail "make image failed (the build output is above)"
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "image $IMAGE is not in the local Docker"
ok "image $IMAGE present"

step "load the image into the kind nodes"
# Through a single-platform archive rather than `kind load docker-image`: with Docker's
# containerd image store (the default since Docker 29) an image index can name manifests (other
# platforms, build attestations) whose content `docker save` does not export, and the nodes'
# import then fails with "content digest ... not found" (kubernetes-sigs/kind#3795).
# Docker before 28 has no --platform; its classic image store holds one platform anyway.
archive="$E2E_WORK_DIR/image.tar"
docker image save --platform "linux/$(docker version --format '{{.Server.Arch}}')" \
    -o "$archive" "$IMAGE" 2>/dev/null ||
    docker image save -o "$archive" "$IMAGE" || fail "docker image save $IMAGE failed"
kind load image-archive "$archive" --name "$KIND_CLUSTER" >&2 ||
    fail "kind load image-archive failed (its output is above)"
rm -f "$archive"
for node in $(kind get nodes --name "$KIND_CLUSTER"); do
    docker exec "$node" crictl inspecti "$IMAGE" >/dev/null 2>&1 ||
        fail "node $node does not have $IMAGE after \`kind load image-archive\` (crictl inspecti failed)"
done
ok "loaded $IMAGE into every node"

# The same values for install and upgrade: the loaded image, never pulled (it exists nowhere
# else), for the control plane and the injected containers alike.
HELM_VALUES=(
    --set "image.repository=$IMAGE_REPOSITORY"
    --set-string "image.tag=$IMAGE_TAG"
    --set image.pullPolicy=Never
    --set proxy.pullPolicy=Never
)

step "helm install palisade into $CONTROL_NS"
h install palisade "$ROOT/charts/palisade" --namespace "$CONTROL_NS" --create-namespace \
    --wait --timeout 5m0s "${HELM_VALUES[@]}" >&2 ||
    fail "helm install failed or the release was not ready within 5 minutes (helm's output is above)"
ok "release installed: $(h list -n "$CONTROL_NS" -o json | jq -r '.[] | "\(.name) revision \(.revision) \(.status)"')"

step "control plane: 2 Ready replicas on different nodes, a leader, the CA and the webhook's caBundle"
check_control_plane

# ---- injection ---------------------------------------------------------------------------

step "namespaces: $MESH_NS (palisade.dev/inject=enabled) and $LEGACY_NS (not meshed)"
k apply -f "$MANIFESTS/namespaces.yaml" >&2
for ns in "$MESH_NS" "$LEGACY_NS"; do
    wait_for 60 "ConfigMap palisade-ca-root-cert in namespace $ns" \
        k -n "$ns" get configmap palisade-ca-root-cert
done
ok "both namespaces have the trust bundle ConfigMap"

step "the injector answers: a server-side dry run of a pod in $MESH_NS comes back injected"
wait_for 90 "a dry-run pod in $MESH_NS to be injected by the webhook" dry_run_injected "$MESH_NS"
ok "webhook injects"

step "deploy the meshed server, the meshed client and the unmeshed client"
k apply -f "$MANIFESTS/workloads.yaml" >&2 ||
    fail "kubectl apply of $MANIFESTS/workloads.yaml failed (a refusal by the injector says why above)"
ok "applied $(grep -c '^kind:' "$MANIFESTS/workloads.yaml") objects"

step "injection happened: palisade-init, palisade-proxy (native sidecar), tlsMode label, status annotation"
check_injected "$MESH_NS" echo
check_injected "$MESH_NS" client
check_not_injected "$LEGACY_NS" legacy

step "pods become Ready with their probes rewritten to the proxy's /app-health"
check_ready_through_proxy

# ---- identity ----------------------------------------------------------------------------

step "workload certificates: SPIFFE IDs from TokenReview-authenticated issuance"
check_certificate "$MESH_NS" echo echo
check_certificate "$MESH_NS" client client
check_issuance_metrics 2

step "the root ConfigMap appears in a new namespace within 5 s and matches the bundle"
check_root_configmap_in_new_namespace "$NEW_NS" 5000

# ---- policy ------------------------------------------------------------------------------

step "no PeerAuthentication (PERMISSIVE by default): both clients reach the server"
check_reaches_over_mtls "$MESH_NS" client
check_reaches_in_plaintext "$LEGACY_NS" legacy

step "PeerAuthentication STRICT: the unmeshed client is refused, the meshed client gets through"
apply_policy pa-strict.yaml peerauthentication default
check_refused "$LEGACY_NS" legacy "the unmeshed client under STRICT"
check_reaches_over_mtls "$MESH_NS" client

step "PeerAuthentication PERMISSIVE: the unmeshed client gets in"
apply_policy pa-permissive.yaml peerauthentication default
check_reaches_in_plaintext "$LEGACY_NS" legacy
check_reaches_over_mtls "$MESH_NS" client

step "DestinationRule tls DISABLE under PERMISSIVE: the meshed client speaks plaintext"
apply_policy dr-disable.yaml destinationrule echo-plaintext
check_reaches_in_plaintext "$MESH_NS" client

step "DestinationRule tls DISABLE under STRICT: the meshed client's plaintext call fails"
apply_policy pa-strict.yaml peerauthentication default
check_refused "$MESH_NS" client "the meshed client sending plaintext (DestinationRule DISABLE) under STRICT"

step "kubectl get pa,dr -A shows both policies Accepted"
check_policy_listing

step "DestinationRule deleted: the meshed client is back on mTLS under STRICT"
k delete -f "$MANIFESTS/dr-disable.yaml" >&2
check_reaches_over_mtls "$MESH_NS" client

# ---- upgrade -----------------------------------------------------------------------------

step "helm upgrade (logLevel changed, every replica replaced) keeps the root"
check_upgrade_keeps_root

step "after the upgrade: existing pods keep talking, STRICT still holds, the injector injects"
check_reaches_over_mtls "$MESH_NS" client
check_refused "$LEGACY_NS" legacy "the unmeshed client under STRICT after the upgrade"
wait_for 90 "a dry-run pod in $MESH_NS to be injected after the upgrade" dry_run_injected "$MESH_NS"
ok "webhook injects after the upgrade"

step "no container of the suite's pods restarted"
check_no_restarts
