package etcdtest

import "syscall"

// procAttr kills etcd when the test binary dies, so a crashed or timed-out
// test leaves no server behind.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
