//go:build tools

// Package tools pins the helm command this module builds so that `go mod tidy` keeps its
// dependencies in go.sum. A module of its own: helm follows a newer Kubernetes client than the
// control plane's module pins, and the two must not share one dependency graph.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
