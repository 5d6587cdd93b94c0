package proxy

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// upgradeType never names h2c: an h2c upgrade is served as HTTP/1.1 (as
// net/http's server does), so no 101 can turn the connection into a
// tunnel past the chain. Other upgrades keep their value.
func TestUpgradeTypeIgnoresH2C(t *testing.T) {
	for _, c := range []struct {
		conn, up, want string
	}{
		{"Upgrade", "websocket", "websocket"},
		{"keep-alive, Upgrade", "websocket", "websocket"},
		{"Upgrade, HTTP2-Settings", "h2c", ""},
		{"Upgrade", "H2C", ""},
		{"Upgrade", "h2c, websocket", "websocket"},
		{"Upgrade", "websocket,h2c", "websocket"},
		{"Upgrade", "h2c-like", "h2c-like"}, // a token is compared whole
		{"close", "websocket", ""},          // no upgrade without the Connection token
	} {
		h := http.Header{"Connection": {c.conn}, "Upgrade": {c.up}}
		if got := upgradeType(h); got != c.want {
			t.Errorf("Connection %q, Upgrade %q: %q, want %q", c.conn, c.up, got, c.want)
		}
	}
}

// The websocket upgrade, the common one, costs no allocation.
func TestUpgradeTypeNoAlloc(t *testing.T) {
	h := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}
	if n := testing.AllocsPerRun(100, func() { _ = upgradeType(h) }); n != 0 {
		t.Errorf("%v allocations, want 0", n)
	}
}

// HTTP2-Settings is connection-specific (RFC 7540 §3.2.1): it never
// reaches the next hop, named by Connection or not.
func TestHTTP2SettingsIsHopByHop(t *testing.T) {
	h := http.Header{"Http2-Settings": {"AAMAAABkAAQAAP__"}, "X-Keep": {"1"}}
	removeHopHeaders(h)
	if _, ok := h["Http2-Settings"]; ok || h.Get("X-Keep") != "1" {
		t.Errorf("after removeHopHeaders: %v", h)
	}
}

// The proxy's own answer to a client body that failed (408 for a stall,
// 400 for a chunk that turned bad after the head was forwarded) keeps its
// X-Trellis-Error and is counted once; on the inbound port it is not
// taken for an app forging mesh headers (appUpstream strips only a
// response the app sent). The app sees the body break off, never a whole
// request.
func TestOwnBodyFailureKeepsErrorHeader(t *testing.T) {
	app := newRecorder(false)
	app.entered = make(chan string, 1)
	m := startSmuggleMeshApp(t, app)
	cases := []struct {
		name, head, rest string
		status           int
		reason           string // the one refusal counted
	}{
		{"stalled body", post("Content-Length: 10\r\n", "abc"), "", http.StatusRequestTimeout, "body_timeout"},
		// The bad chunk is sent only once the app is reading the body, so
		// the engine cannot refuse it with the head: the proxy finds it
		// while streaming.
		{"chunk turned bad mid-body", chunkedPost("5\r\nhello\r\n"), "zz\r\n", http.StatusBadRequest, "framing"},
	}
	for _, in := range m.listeners {
		for _, c := range cases {
			t.Run(in.name+"/"+c.name, func(t *testing.T) {
				m.ownBodyFailure(t, in, c.head, c.rest, c.status, c.reason)
			})
		}
	}
}

// ownBodyFailure sends head, waits for the app to be reading the body,
// sends rest, and checks the proxy's answer, the refusal and the app's view.
func (m *smuggleMesh) ownBodyFailure(t *testing.T, l listenerUnderTest, head, rest string, status int, reason string) {
	t.Helper()
	before := refusals(t, l.proxy)
	conn := l.dial(t)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.app.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the app never got the request")
	}
	if rest != "" {
		if _, err := io.WriteString(conn, rest); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get(headerError); resp.StatusCode != status || got != FlagDPE.String() {
		t.Errorf("%d %s=%q, want %d %s=%q", resp.StatusCode, headerError, got, status, headerError, FlagDPE)
	}
	// Exactly the one refusal; mesh_header would be the proxy's own
	// answer taken for an app forging the mesh's word.
	if d := diff(before, refusals(t, l.proxy)); len(d) != 1 || d[reason] != 1 {
		t.Errorf("refusals %v, want only one %q", d, reason)
	}
	if got := m.appSaw(t); len(got) != 1 || got[0] != "POST orders/s (broken)" {
		t.Errorf("the app saw %q, want the body broken off", got)
	}
}

// FuzzWithoutH2C: whatever the Upgrade value, the result names no h2c
// token, keeps every other token in order, and is the value itself when
// it has no h2c in it.
func FuzzWithoutH2C(f *testing.F) {
	for _, s := range []string{"websocket", "h2c", "H2C, websocket", "websocket,h2c", " h2c ,, x", "h2c-like", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got := withoutH2C(v)
		if !containsH2C(v) {
			if got != v {
				t.Fatalf("withoutH2C(%q) = %q, want it unchanged", v, got)
			}
			return
		}
		var want []string
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" && !strings.EqualFold(tok, "h2c") {
				want = append(want, tok)
			}
		}
		var have []string
		for tok := range strings.SplitSeq(got, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				if strings.EqualFold(tok, "h2c") {
					t.Fatalf("withoutH2C(%q) = %q still names h2c", v, got)
				}
				have = append(have, tok)
			}
		}
		if strings.Join(have, ",") != strings.Join(want, ",") {
			t.Fatalf("withoutH2C(%q) = %q, want tokens %q", v, got, want)
		}
	})
}

// BenchmarkUpgradeType: the per-request cost of deciding an upgrade.
func BenchmarkUpgradeType(b *testing.B) {
	for _, c := range []struct {
		name string
		h    http.Header
	}{
		{"none", http.Header{"Accept": {"*/*"}}},
		{"websocket", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}},
		{"h2c", http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c"}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = upgradeType(c.h)
			}
		})
	}
}
