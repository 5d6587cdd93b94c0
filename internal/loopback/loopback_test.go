package loopback

import (
	"net"
	"strconv"
	"testing"
)

func TestEphemeralLow(t *testing.T) {
	for raw, want := range map[string]int{
		"32768\t60999\n": 32768,
		"40000 60999":    40000,
		"":               32768,
		"x 1":            32768,
		"1024 65535":     32768, // leaves no room below: the default
		"70000 80000":    32768,
	} {
		if got := ephemeralLow(raw); got != want {
			t.Errorf("ephemeralLow(%q) = %d, want %d", raw, got, want)
		}
	}
}

// TestPortsAreFreeDistinctAndBelowTheRange: every port binds, none repeats,
// none is in the range where ":0" listeners land.
func TestPortsAreFreeDistinctAndBelowTheRange(t *testing.T) {
	top := ephemeralLow(readRange())
	addrs, err := Addrs(200)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
		_, ps, _ := net.SplitHostPort(a)
		p, _ := strconv.Atoi(ps)
		if p < lowest || p >= top {
			t.Fatalf("%s outside [%d, %d)", a, lowest, top)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("handed-out %s does not bind: %v", a, err)
		}
		l.Close()
	}
}

// TestPortSkipsABusyPort: a port something listens on is not handed out.
func TestPortSkipsABusyPort(t *testing.T) {
	top := ephemeralLow(readRange())
	// Listen on one port and mark every other but one as handed out: the
	// busy port and one free one are all that remain.
	busy, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(top-1))
	if err != nil {
		t.Skip("top port in use:", err)
	}
	defer busy.Close()
	free := top - 2
	for p := lowest; p < top; p++ {
		if p != free && p != top-1 {
			handedOut.LoadOrStore(p, struct{}{})
		}
	}
	t.Cleanup(func() { handedOut.Clear() })
	got, err := Port()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Port(); err == nil {
		t.Error("a second Port() found a port, with none left")
	}
	if got != free {
		t.Fatalf("Port() = %d, want %d (the busy %d must be skipped)", got, free, top-1)
	}
}
