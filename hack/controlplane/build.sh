#!/usr/bin/env bash
# Build the pinned control plane from the Go module proxy into a cache outside the clone, keyed by
# version, so CI's fresh clones and warm machines reuse it. Prints the bin directory on stdout.
#
# kube-apiserver, kube-controller-manager and kube-scheduler are one multi-call binary (kube/main.go;
# one link instead of three), reached through a symlink per component. etcd stays its own module:
# joining it would lift grpc and OpenTelemetry under the apiserver to etcd's newer versions. The two
# builds run side by side, so one's link overlaps the other's compile.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${ROLLCALL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rollcall}
# "multicall": a new name, so a cache of the three separate binaries is never taken for this one.
bin="$cache/controlplane-multicall-k8s-$KUBE_VERSION-etcd-$ETCD_VERSION/bin"
components=(kube-apiserver kube-controller-manager kube-scheduler)
ready=1
for c in etcd kube "${components[@]}"; do [[ -x $bin/$c ]] || ready=0; done
if ((ready)); then
  echo "$bin"; exit 0
fi
rm -rf "$bin.partial" && mkdir -p "$bin.partial"
# The compiler (a Go program) collects garbage only near 3 GiB (GOGC=off, GOMEMLIMIT=3GiB), so a
# cold build needs up to ~6 GiB for its two compile processes. Side by side on
# k8s.io/kubernetes/pkg/apis/core/v1 and its deps from an empty build cache: GOGC=100 82.7/82.0,
# GOGC=400 70.7/69.6, GOGC=off 64.7, with the limit 58.5 CPU-s (-29 %).
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOGC=off GOMEMLIMIT=3GiB
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
# The linker drops DWARF (-w), so the compiler need not write it: -dwarf=false saved 17-19 % of the
# compile CPU (k8s.io/kubernetes/pkg/apis/core/v1 and its deps from an empty build cache, twice each
# way: 111/108 -> 90/91 CPU-s; this whole build from an empty build cache: 729 CPU-s, against 867
# before). The binaries are the same programs, so the cache key stays.
gc="all=-dwarf=false"
(cd "$here/etcd" && go build -trimpath -gcflags "$gc" -ldflags "-s -w" -o "$bin.partial/etcd" go.etcd.io/etcd/server/v3) >&2 &
etcd_pid=$!
(cd "$here/kube" && go build -trimpath -gcflags "$gc" -tags selinux,notest -ldflags "$ld" -o "$bin.partial/kube" .) >&2 || {
  kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" || true; exit 1
}
wait "$etcd_pid"
for c in "${components[@]}"; do ln -s kube "$bin.partial/$c"; done
rm -rf "$bin" && mv "$bin.partial" "$bin"
echo "$bin"
