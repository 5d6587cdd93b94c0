//go:build unix && !linux

package demo

import "syscall"

// sysProcAttr puts a child in its own process group, so stopping it can reach
// whatever it started. There is no parent-death signal outside Linux.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

func setParentDeathSignal() {}
