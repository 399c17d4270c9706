//go:build !linux

package e2e

import "errors"

func runIsolated([]string) (int, error) {
	return 0, errors.New("network namespaces need Linux")
}

func loopbackUp() error { return errors.New("network namespaces need Linux") }
