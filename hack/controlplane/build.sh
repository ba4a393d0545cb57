#!/usr/bin/env bash
# Build the pinned control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
# from the Go module proxy into a cache outside the clone, keyed by version, so CI's fresh clones
# and warm machines reuse it. Prints the bin directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${ROLLCALL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rollcall}
bin="$cache/controlplane-k8s-$KUBE_VERSION-etcd-$ETCD_VERSION/bin"
if [[ -x $bin/etcd && -x $bin/kube-apiserver && -x $bin/kube-controller-manager && -x $bin/kube-scheduler ]]; then
  echo "$bin"; exit 0
fi
mkdir -p "$bin.partial"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin.partial/etcd" go.etcd.io/etcd/server/v3) >&2
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  (cd "$here/kube" && go build -trimpath -tags selinux,notest -ldflags "$ld" -o "$bin.partial/$c" "k8s.io/kubernetes/cmd/$c") >&2
done
rm -rf "$bin" && mv "$bin.partial" "$bin"
echo "$bin"
