//go:build !linux

package imagetrim

// Trim does nothing off Linux.
func Trim() (int64, error) { return 0, nil }
