// Package imagetrim drops the running executable's clean, read-only pages
// (code, read-only data, the function table) from the process's resident
// set once start-up is over.
//
// Trellis is one binary: control plane, xDS, CA, CLI and proxy. Go runs
// every linked package's initialisation whatever the subcommand, and that
// touches most of the binary's 30 MB of code and tables, which then count
// in a sidecar's RSS although a proxy never runs most of them again. The
// pages are file-backed and unmodified, so dropping them loses nothing:
// the few a proxy still uses fault back in from the page cache (a minor
// fault each, once), and the kernel would reclaim the rest itself, but
// only under memory pressure. A mapping with any anonymous page (copied
// on write: a relocated, then write-protected table) is left alone:
// dropping it would revert it to the file's contents. Dirty page-cache
// pages (a binary just written) are the file's and stay in the cache.
package imagetrim

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
)

// span is one mapping of the executable that may be dropped.
type span struct {
	start, end uint64
	rss        int64 // resident bytes before the drop
}

// trimmable reads /proc/self/smaps-formatted r and returns the mappings of
// exe that are read-only and hold only the file's own pages.
func trimmable(r io.Reader, exe string) []span {
	var out []span
	var cur *span
	ok := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	flush := func() {
		if cur != nil && ok && cur.end > cur.start {
			out = append(out, *cur)
		}
		cur, ok = nil, false
	}
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if start, end, isHead := mappingHead(f); isHead {
			flush()
			// r-xp (code) or r--p (read-only data), from exe itself.
			if len(f) >= 6 && (f[1] == "r-xp" || f[1] == "r--p") && strings.Join(f[5:], " ") == exe {
				cur, ok = &span{start: start, end: end}, true
			}
			continue
		}
		if cur == nil || len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "Rss:":
			cur.rss = kb << 10
		case "Anonymous:", "Swap:": // copied on write: the file no longer has them
			if kb != 0 {
				ok = false
			}
		}
	}
	flush()
	return out
}

// mappingHead parses "start-end perms ..." (hex addresses).
func mappingHead(f []string) (start, end uint64, ok bool) {
	a, b, found := strings.Cut(f[0], "-")
	if !found || len(f) < 5 {
		return 0, 0, false
	}
	start, err1 := strconv.ParseUint(a, 16, 64)
	end, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil || end < start {
		return 0, 0, false
	}
	return start, end, true
}

// executable is the path the kernel shows for the running binary.
func executable() (string, error) {
	return os.Readlink("/proc/self/exe")
}
