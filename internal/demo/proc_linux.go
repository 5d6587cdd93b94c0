//go:build linux

package demo

import "syscall"

// sysProcAttr puts a child in its own process group, so stopping it can reach
// whatever it started, and has the kernel SIGKILL it if the demo dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// setParentDeathSignal asks the kernel to SIGTERM this process when its
// parent (the app's proxy) dies, so no app outlives a killed demo.
func setParentDeathSignal() {
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0)
}
