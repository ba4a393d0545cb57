//go:build tools

// Package tools pins the Kueue controller manager that hack/kueue/build.sh builds.
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
