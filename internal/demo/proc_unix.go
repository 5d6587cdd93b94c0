//go:build unix

package demo

import "syscall"

// signalGroup sends sig to the process group led by pid.
func signalGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}

// terminate asks a process to stop; trellis proxy forwards it to its app.
func terminate(pid int) error {
	return syscall.Kill(pid, syscall.SIGTERM)
}
