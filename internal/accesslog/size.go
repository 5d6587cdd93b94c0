package accesslog

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a file size bound: a number of bytes with an optional
// unit, KiB, MiB or GiB (powers of 1024; KB, MB, GB and K, M, G mean the
// same), e.g. 100MiB, 64KiB, 1048576. It must be at least 1 KiB: a smaller
// file could not hold one line.
func ParseSize(s string) (int64, error) {
	num := strings.TrimRight(s, "KMGiBkmgb")
	unit := strings.ToLower(s[len(num):])
	var mult int64
	switch unit {
	case "", "b":
		mult = 1
	case "k", "kb", "kib":
		mult = 1 << 10
	case "m", "mb", "mib":
		mult = 1 << 20
	case "g", "gb", "gib":
		mult = 1 << 30
	default:
		return 0, fmt.Errorf("accesslog: size %q: unknown unit %q (use KiB, MiB or GiB)", s, s[len(num):])
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("accesslog: size %q: want a whole number of bytes, KiB, MiB or GiB (e.g. 100MiB)", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("accesslog: size %q is too large", s)
	}
	if n*mult < 1<<10 {
		return 0, fmt.Errorf("accesslog: size %q: must be at least 1KiB", s)
	}
	return n * mult, nil
}
