// Package echo bounds input that errors, logs and error pages quote back.
// A value someone sent (a name, a host, a path, a header) is echoed whole
// only when short: a 1 MiB name must not come back as a 4 MiB error. The
// cut is marked, so a reader knows the value went on.
package echo

import (
	"strconv"
	"unicode/utf8"
)

// Max is the longest value quoted back whole: longer than any valid mesh
// name, host or route path a human reads in an error.
const Max = 256

// Clip returns s if it is at most max bytes, else its first max bytes (cut
// on a UTF-8 boundary) and a marker saying how many bytes were left out.
func Clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && cut < len(s) && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…[" + strconv.Itoa(len(s)-cut) + " more bytes]"
}

// Quote is strconv.Quote of s clipped to Max bytes (before quoting).
func Quote(s string) string {
	if len(s) <= Max {
		return strconv.Quote(s)
	}
	return strconv.Quote(Clip(s, Max))
}
