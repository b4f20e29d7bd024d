//go:build tools

// Package tools pins the fake-gcs-server command this module builds (see go.mod).
package tools

import _ "github.com/fsouza/fake-gcs-server"
