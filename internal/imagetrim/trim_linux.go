//go:build linux

package imagetrim

import (
	"os"

	"golang.org/x/sys/unix"
)

// Trim drops the executable's clean read-only pages from the resident
// set and returns how many resident bytes they held.
func Trim() (int64, error) {
	exe, err := executable()
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	spans := trimmable(f, exe)
	_ = f.Close()
	var dropped int64
	for _, s := range spans {
		// The address range is the kernel's own mapping of the file, not
		// Go memory: madvise by number, not through a []byte.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(s.start), uintptr(s.end-s.start), unix.MADV_DONTNEED); errno != 0 {
			return dropped, errno
		}
		dropped += s.rss
	}
	return dropped, nil
}
