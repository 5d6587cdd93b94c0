//go:build !unix

package demo

import (
	"os"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr { return nil }

func setParentDeathSignal() {}

// Without process groups the best is to kill the process itself.
func signalGroup(pid int, _ syscall.Signal) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

func terminate(pid int) error { return signalGroup(pid, 0) }
