#!/usr/bin/env bash
# Build Kueue's controller manager from the Go module proxy (the pinned wrapper module here) into a
# cache outside the clone, keyed by version, so fresh clones and warm machines reuse it. Copies the
# CRDs and webhook configurations of that version next to it. Prints the bin directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${ROLLCALL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rollcall}
root="$cache/kueue-$KUEUE_VERSION"
bin="$root/bin"
if [[ -x $bin/kueue && -d $root/crd && -f $root/webhook/manifests.yaml ]]; then
  echo "$bin"; exit 0
fi
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOGC=off GOMEMLIMIT=3GiB  # as hack/controlplane/build.sh
if [[ ! -x $bin/kueue ]]; then
  mkdir -p "$bin.partial"
  ld="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
  (cd "$here" && go build -trimpath -gcflags all=-dwarf=false -ldflags "$ld" -o "$bin.partial/kueue" sigs.k8s.io/kueue/cmd/kueue) >&2
  rm -rf "$bin" && mv "$bin.partial" "$bin"
fi
# The manifests of the same module version: CRDs (server-side apply) and webhook configurations.
src=$(cd "$here" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
rm -rf "$root/manifests.partial" && mkdir -p "$root/manifests.partial/crd" "$root/manifests.partial/webhook"
install -m 0644 "$src"/config/components/crd/bases/*.yaml "$root/manifests.partial/crd/"
install -m 0644 "$src/config/components/webhook/manifests.yaml" "$root/manifests.partial/webhook/"
rm -rf "$root/crd" "$root/webhook"
mv "$root/manifests.partial/crd" "$root/manifests.partial/webhook" "$root/" && rmdir "$root/manifests.partial"
echo "$bin"
