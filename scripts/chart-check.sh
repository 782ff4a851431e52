#!/usr/bin/env bash
# The chart checks `make test` runs (`make chart-check`), offline:
#   1. the project's shell scripts pass `bash -n` and shellcheck;
#   2. the chart's CRDs are byte-for-byte those in crds/ (the generated source);
#   3. `helm lint --strict` with the default and the non-default values;
#   4. `helm template` with default values (namespace palisade-system) and with
#      ci/custom-values.yaml (namespace mesh-ctl), each through `kubernetes-validate --strict`
#      for Kubernetes 1.33, the mesh-wide PeerAuthentication through our CRD's schema, and the
#      assertions in scripts/chart_assert.py;
#   5. values.schema.json refuses bad values;
#   6. the kind e2e suite's helpers pass their offline self-test (e2e/selftest.sh), and the
#      GitHub Actions workflows validate against the schema check-jsonschema ships
#      (vendor.github-workflows, no network needed).
# helm comes from scripts/install-helm.sh (cached after the first run); kubernetes-validate,
# check-jsonschema and shellcheck from `make tools`.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly CHART=charts/palisade
readonly K8S_VERSION=1.33.0

fail() {
    echo "chart-check: $*" >&2
    exit 1
}

for tool in kubernetes-validate check-jsonschema shellcheck python3; do
    command -v "$tool" >/dev/null || fail "$tool is missing (run \`make tools\`)"
done
helm="$(scripts/install-helm.sh)/helm"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# 1. Shell scripts.
mapfile -t scripts < <(find . \( -path ./.git -o -path ./target -o -path './target-*' \) -prune \
    -o -type f \( -name '*.sh' -o -path ./.ci/run \) -print | sort)
for script in "${scripts[@]}"; do
    bash -n "$script" || fail "$script: syntax error"
done
shellcheck "${scripts[@]}" || fail "shellcheck found problems in ${scripts[*]}"
echo "chart-check: ${#scripts[@]} shell scripts pass bash -n and shellcheck"

# 2. CRDs: the chart installs exactly the generated ones (`make crds` refreshes both).
diff -r crds "$CHART/crds" >"$out/crds.diff" ||
    fail "$CHART/crds differs from crds/ (run \`make crds\`):"$'\n'"$(head -40 "$out/crds.diff")"
echo "chart-check: $CHART/crds is identical to crds/"

# The chart installs the release it was cut with: appVersion (the default image tag) is the
# crate's version, which is also the injector's default image tag.
crate_version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
app_version="$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' "$CHART/Chart.yaml")"
[[ "$app_version" == "$crate_version" ]] ||
    fail "$CHART/Chart.yaml appVersion is \"$app_version\", Cargo.toml says \"$crate_version\""

# 3. Lint.
"$helm" lint --strict --quiet "$CHART" >"$out/lint" 2>&1 || fail "helm lint:"$'\n'"$(cat "$out/lint")"
"$helm" lint --strict --quiet "$CHART" -f "$CHART/ci/custom-values.yaml" >"$out/lint" 2>&1 ||
    fail "helm lint (custom values):"$'\n'"$(cat "$out/lint")"
echo "chart-check: helm lint --strict passes (default and custom values)"

# 4. Render, validate, assert.
# The CRD's openAPIV3Schema as a JSON schema, for the custom resources the chart renders.
python3 - "$CHART/crds/peerauthentications.security.palisade.dev.yaml" "$out/pa-schema.json" <<'EOF'
import json, sys, yaml
crd = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
json.dump(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], open(sys.argv[2], "w"))
EOF

render() { # case namespace [helm args...]
    local case="$1" ns="$2"
    shift 2
    local rendered="$out/$case.yaml"
    "$helm" template palisade "$CHART" --namespace "$ns" "$@" >"$rendered" 2>"$out/$case.err" ||
        fail "helm template ($case):"$'\n'"$(cat "$out/$case.err")"
    # Built-in kinds against Kubernetes' own schemas; our custom resources have none there
    # (the warning says so) and are checked against the CRD below instead.
    kubernetes-validate --strict -k "$K8S_VERSION" "$rendered" >"$out/$case.validate" 2>&1 ||
        fail "kubernetes-validate ($case):"$'\n'"$(cat "$out/$case.validate")"
    local unexpected
    unexpected="$(grep -v '^INFO .* passed for resource ' "$out/$case.validate" |
        grep -v "^WARN .* Couldn't find schema for kind PeerAuthentication with api version security.palisade.dev/v1 " || true)"
    [[ -z "$unexpected" ]] || fail "kubernetes-validate ($case):"$'\n'"$unexpected"
    python3 - "$rendered" "$out/$case-pa" <<'EOF'
import json, os, sys, yaml
os.makedirs(sys.argv[2], exist_ok=True)
docs = [d for d in yaml.safe_load_all(open(sys.argv[1], encoding="utf-8")) if d]
for i, doc in enumerate(d for d in docs if d["kind"] == "PeerAuthentication"):
    json.dump(doc, open(os.path.join(sys.argv[2], f"{i}.json"), "w"))
EOF
    shopt -s nullglob
    local policies=("$out/$case-pa/"*.json)
    shopt -u nullglob
    if ((${#policies[@]})); then
        check-jsonschema --schemafile "$out/pa-schema.json" "${policies[@]}" >"$out/$case.pa" 2>&1 ||
            fail "PeerAuthentication ($case) does not match the CRD:"$'\n'"$(cat "$out/$case.pa")"
    fi
    python3 scripts/chart_assert.py "$case" "$ns" "$rendered"
}
render default palisade-system
render custom mesh-ctl -f "$CHART/ci/custom-values.yaml"
# The assertions can fail: the custom rendering does not pass as the default one.
if python3 scripts/chart_assert.py default mesh-ctl "$out/custom.yaml" 2>/dev/null >&2; then
    fail "scripts/chart_assert.py accepts the custom rendering as the default one"
fi

# 5. The schema refuses what would break at run time or silently do something else.
refused=0
while IFS='|' read -r setting key; do
    if "$helm" template palisade "$CHART" --namespace palisade-system --set "$setting" \
        >/dev/null 2>"$out/refused.err"; then
        fail "values.schema.json accepts --set $setting"
    fi
    grep -q -- "$key" "$out/refused.err" ||
        fail "--set $setting was refused without naming $key:"$'\n'"$(cat "$out/refused.err")"
    refused=$((refused + 1))
done <<'EOF'
webhook.failurePolicy=Maybe|failurePolicy
webhook.timeoutSeconds=60|timeoutSeconds
trustDomain=Not A Domain|trustDomain
certificates.defaultTTL=1.5h|defaultTTL
certificates.maxTTL=90|maxTTL
image.digest=sha256:xyz|digest
image.pullPolicy=Sometimes|pullPolicy
proxy.resources.requests.cpu=lots|cpu
proxy.image=bad image|image
controlPlane.address=no-port|address
meshPeerAuthentication.mode=strict|mode
replicaCount=0|replicaCount
listenAddress=localhost|listenAddress
podLabels.app\.kubernetes\.io/name=x|app.kubernetes.io/name
unknownSetting=1|unknownSetting
EOF
echo "chart-check: values.schema.json refuses $refused bad settings"

# 6. The e2e suite's own logic, and the workflows that run it and `make test`.
for tool in jq openssl; do
    command -v "$tool" >/dev/null || fail "$tool is missing (e2e/selftest.sh needs it; Debian: apt-get install $tool)"
done
e2e/selftest.sh >"$out/e2e-selftest" 2>&1 || fail "e2e/selftest.sh:"$'\n'"$(cat "$out/e2e-selftest")"
cat "$out/e2e-selftest"
shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
shopt -u nullglob
if ((${#workflows[@]})); then
    check-jsonschema --builtin-schema vendor.github-workflows "${workflows[@]}" >"$out/workflows" 2>&1 ||
        fail "GitHub Actions workflows do not match the schema:"$'\n'"$(cat "$out/workflows")"
    echo "chart-check: ${#workflows[@]} GitHub Actions workflows match the schema"
fi
echo "chart-check: ok"
