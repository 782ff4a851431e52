#!/usr/bin/env bash
# Helpers of the kind end-to-end suite (sourced by e2e/run.sh; not run on its own).
#
# Conventions: every check is a named step (`step`); a failed check calls `fail` with what was
# expected and what was seen, which exits the script, and the EXIT trap set by run.sh collects
# diagnostics and deletes the cluster. Nothing waits by sleeping alone: `wait_for` polls a
# condition until a deadline and reports the last thing it saw.
#
# Every kubectl and helm call goes through `k` and `h`, which pin the suite's own kubeconfig and
# the kind cluster's context, so the suite cannot touch any other cluster whatever the caller's
# current context is.

# Shared state, set by run.sh before anything here runs.
: "${KIND_CLUSTER:?}" "${E2E_KUBECONFIG:?}" "${E2E_DIAGNOSTICS:?}"

E2E_STEP_NUMBER=0
E2E_STEP="start-up"

# log MESSAGE...: a timestamped line on stderr.
log() {
    printf '%s e2e: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
}

# step NAME: starts a named step (shown in the output and in every failure).
step() {
    E2E_STEP_NUMBER=$((E2E_STEP_NUMBER + 1))
    E2E_STEP="$1"
    printf '\n%s e2e: ==> step %d: %s\n' "$(date -u +%H:%M:%S)" "$E2E_STEP_NUMBER" "$E2E_STEP" >&2
}

# ok MESSAGE...: what a step established.
ok() {
    log "ok: $*"
}

# fail MESSAGE...: the suite failed; says which step and why, then exits non-zero (the EXIT
# trap dumps diagnostics). Call it from the main shell, not from inside $(...).
fail() {
    printf '\n%s e2e: FAILED in step %d (%s):\n%s\n' "$(date -u +%H:%M:%S)" \
        "$E2E_STEP_NUMBER" "$E2E_STEP" "$*" >&2
    exit 1
}

# k ARGS...: kubectl against the suite's cluster only.
k() {
    kubectl --kubeconfig "$E2E_KUBECONFIG" --context "kind-$KIND_CLUSTER" "$@"
}

# h ARGS...: helm against the suite's cluster only.
h() {
    helm --kubeconfig "$E2E_KUBECONFIG" --kube-context "kind-$KIND_CLUSTER" "$@"
}

# now_ms: wall-clock milliseconds (for the few checks with a deadline under a second's grain).
now_ms() {
    local ns
    ns="$(date +%s%N)"
    echo $((ns / 1000000))
}

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every E2E_POLL_SECONDS (default 1)
# until it succeeds; after SECONDS, fails with DESCRIPTION and COMMAND's last output.
# COMMAND's stdout and stderr are kept in WAIT_FOR_OUTPUT for the caller.
WAIT_FOR_OUTPUT=""
wait_for() {
    local timeout="$1" what="$2"
    shift 2
    local deadline=$(($(date +%s) + timeout)) attempts=0
    while true; do
        attempts=$((attempts + 1))
        if WAIT_FOR_OUTPUT="$("$@" 2>&1)"; then
            return 0
        fi
        if (($(date +%s) >= deadline)); then
            fail "timed out after ${timeout}s (${attempts} attempts) waiting for: ${what}
last attempt: $*
it said: ${WAIT_FOR_OUTPUT:-<no output>}"
        fi
        sleep "${E2E_POLL_SECONDS:-1}"
    done
}

# out_of COMMAND...: COMMAND's stdout alone, so a warning on stderr cannot corrupt JSON or an
# answer being compared; when COMMAND fails its stderr follows, for the caller's message. The
# status is COMMAND's.
out_of() {
    local err status=0
    err="$(mktemp "${TMPDIR:-/tmp}/e2e-stderr.XXXXXX")"
    "$@" 2>"$err" || status=$?
    if ((status != 0)); then
        cat "$err"
    fi
    rm -f "$err"
    return "$status"
}

# jsonpath KIND/NAME NAMESPACE EXPRESSION: one jsonpath value of an object ("" when absent).
# NAMESPACE "-" means cluster-scoped.
jsonpath() {
    local object="$1" ns="$2" expr="$3"
    if [[ "$ns" == "-" ]]; then
        k get "$object" -o "jsonpath=$expr"
    else
        k -n "$ns" get "$object" -o "jsonpath=$expr"
    fi
}

# expect_eq WHAT EXPECTED SEEN: fails unless SEEN is EXPECTED.
expect_eq() {
    local what="$1" expected="$2" seen="$3"
    [[ "$seen" == "$expected" ]] || fail "$what: expected \"$expected\", saw \"$seen\""
}

# pem_bodies: reads PEM text on stdin and prints each certificate's base64 body on one line,
# in order. Two PEM texts hold the same certificates exactly when these lines are equal,
# whatever their line wrapping, trailing newlines or comments.
pem_bodies() {
    awk '/-----BEGIN CERTIFICATE-----/ { body = ""; inside = 1; next }
         /-----END CERTIFICATE-----/   { if (inside) print body; inside = 0; next }
         inside { gsub(/[ \t\r]/, ""); body = body $0 }'
}

# metric_sum NAME [LABEL="VALUE"...]: reads Prometheus text on stdin and prints the sum of the
# samples of metric NAME whose labels include every LABEL="VALUE" given (0 when none match).
metric_sum() {
    local name="$1"
    shift
    awk -v name="$name" -v want="$(printf '%s\n' "$@")" '
        BEGIN { n = split(want, wanted, "\n"); total = 0 }
        /^#/ { next }
        {
            sample = $1
            metric = sample; sub(/\{.*/, "", metric)
            if (metric != name) next
            labels = ""
            if (index(sample, "{") > 0) { labels = sample; sub(/^[^{]*\{/, "", labels); sub(/\}$/, "", labels) }
            matched = 1
            for (i = 1; i <= n; i++) {
                if (wanted[i] == "") continue
                if (index("," labels ",", "," wanted[i] ",") == 0) { matched = 0; break }
            }
            if (matched) total += $2
        }
        END { printf "%d\n", total }'
}

# pod_get NAMESPACE POD PORT PATH: GET http://<pod>:PORT/PATH through the API server's pod proxy
# (what a user's `kubectl get --raw` does; no port-forward process to manage).
pod_get() {
    local ns="$1" pod="$2" port="$3" path="$4"
    k get --raw "/api/v1/namespaces/$ns/pods/$pod:$port/proxy/${path#/}"
}

# dump_diagnostics: everything a maintainer needs to understand a failure. Full dumps go to
# files under $E2E_DIAGNOSTICS (CI uploads that directory); the most telling parts (pods,
# events, describe and logs of the suite's pods and the control plane) are also printed.
dump_diagnostics() {
    set +e
    local dir="$E2E_DIAGNOSTICS" ns pod
    mkdir -p "$dir"
    log "collecting diagnostics into $dir"
    {
        echo "### nodes"
        k get nodes -o wide
        echo "### pods"
        k get pods -A -o wide
        echo "### palisade objects"
        k get pa,dr -A -o wide
        echo "### events (oldest first)"
        k get events -A --sort-by=.lastTimestamp
    } >"$dir/cluster.txt" 2>&1
    k get pa,dr -A -o yaml >"$dir/policies.yaml" 2>&1
    k get mutatingwebhookconfiguration palisade-sidecar-injector -o yaml >"$dir/webhook.yaml" 2>&1
    k get configmaps -A --field-selector metadata.name=palisade-ca-root-cert -o yaml \
        >"$dir/root-cert-configmaps.yaml" 2>&1
    h status palisade -n palisade-system >"$dir/helm-status.txt" 2>&1
    h history palisade -n palisade-system >>"$dir/helm-status.txt" 2>&1

    for ns in palisade-system e2e-mesh e2e-legacy "${E2E_EXTRA_NAMESPACES[@]}"; do
        k get namespace "$ns" >/dev/null 2>&1 || continue
        k -n "$ns" describe pods >"$dir/describe-$ns.txt" 2>&1
        k -n "$ns" get events --sort-by=.lastTimestamp >"$dir/events-$ns.txt" 2>&1
        for pod in $(k -n "$ns" get pods -o 'jsonpath={.items[*].metadata.name}' 2>/dev/null); do
            k -n "$ns" logs "$pod" --all-containers --prefix --timestamps \
                >"$dir/logs-$ns-$pod.txt" 2>&1
            k -n "$ns" logs "$pod" --all-containers --prefix --timestamps --previous \
                >"$dir/logs-$ns-$pod-previous.txt" 2>/dev/null || rm -f "$dir/logs-$ns-$pod-previous.txt"
        done
    done
    for pod in $(k -n palisade-system get pods -l app.kubernetes.io/name=palisade \
        -o 'jsonpath={.items[*].metadata.name}' 2>/dev/null); do
        pod_get palisade-system "$pod" 15014 /metrics >"$dir/metrics-controller-$pod.txt" 2>&1
    done
    for pod in $(k -n e2e-mesh get pods -o 'jsonpath={.items[*].metadata.name}' 2>/dev/null); do
        for path in certs config metrics; do
            pod_get e2e-mesh "$pod" 15020 "/$path" >"$dir/proxy-$pod-$path.txt" 2>&1
        done
    done
    kind export logs "$dir/kind-logs" --name "$KIND_CLUSTER" >/dev/null 2>&1

    # What a CI log reader sees without downloading anything.
    printf '\n===== diagnostics (full set in %s) =====\n' "$dir" >&2
    cat "$dir/cluster.txt" >&2
    for ns in e2e-mesh e2e-legacy; do
        [[ -f "$dir/describe-$ns.txt" ]] || continue
        printf '\n===== kubectl describe pods -n %s =====\n' "$ns" >&2
        cat "$dir/describe-$ns.txt" >&2
        for log_file in "$dir/logs-$ns-"*.txt; do
            [[ -f "$log_file" ]] || continue
            printf '\n===== %s (last 100 lines) =====\n' "${log_file##*/}" >&2
            tail -n 100 "$log_file" >&2
        done
    done
    for log_file in "$dir/logs-palisade-system-"*.txt; do
        [[ -f "$log_file" ]] || continue
        printf '\n===== %s (last 100 lines) =====\n' "${log_file##*/}" >&2
        tail -n 100 "$log_file" >&2
    done
    printf '\n===== end of diagnostics =====\n' >&2
    set -e
}
