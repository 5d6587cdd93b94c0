package e2e

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tapLine is one line of `trellis tap -o json`.
type tapLine struct {
	Type                string            `json:"type"`
	Proxy               string            `json:"proxy"`
	Count               uint64            `json:"count"`
	Direction           string            `json:"direction"`
	Method              string            `json:"method"`
	Authority           string            `json:"authority"`
	Path                string            `json:"path"`
	Status              int               `json:"status"`
	LatencyMS           float64           `json:"latencyMs"`
	SourceIdentity      string            `json:"sourceIdentity"`
	DestinationIdentity string            `json:"destinationIdentity"`
	DestinationService  string            `json:"destinationService"`
	ResponseFlags       string            `json:"responseFlags"`
	Headers             map[string]string `json:"headers"`
}

// tapRun is a running `trellis tap ... -o json`.
type tapRun struct {
	t    *testing.T
	proc *process
}

func (cp *controlPlane) tap(t *testing.T, args ...string) *tapRun {
	t.Helper()
	return &tapRun{t: t, proc: start(t, "tap "+strings.Join(args, " "), append([]string{"--data-dir", cp.dir, "tap", "-o", "json"}, args...)...)}
}

// lines parses what the tap printed so far (stderr's "tap: ..." lines are
// not JSON and are left out).
func (r *tapRun) lines() (events []tapLine, skipped uint64) {
	for l := range strings.SplitSeq(r.proc.out.String(), "\n") {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var tl tapLine
		if err := json.Unmarshal([]byte(l), &tl); err != nil {
			r.t.Fatalf("tap printed a bad line %q: %v", l, err)
		}
		switch tl.Type {
		case "event":
			events = append(events, tl)
		case "skipped":
			skipped += tl.Count
		}
	}
	return events, skipped
}

func (r *tapRun) kill() {
	_ = syscall.Kill(-r.proc.cmd.Process.Pid, syscall.SIGKILL)
	<-r.proc.done
}

// waitTaps waits until the proxy runs n taps.
func (s *sidecar) waitTaps(t *testing.T, n int) {
	t.Helper()
	eventually(t, 10*time.Second, "proxy "+s.name+" to run "+strconv.Itoa(n)+" taps", func() bool {
		return s.metric(t, "trellis_proxy_taps_running") == strconv.Itoa(n)
	})
}

const (
	clientID = "spiffe://trellis.local/ns/default/sa/client"
	webID    = "spiffe://trellis.local/ns/default/sa/web"
	// tapSecret is in every request's credentials and query: it must never
	// reach a tap's output.
	tapSecret = "s3cret-7f2a91"
)

// TestTap: real control plane, proxies, apps and `trellis tap` processes.
// Known requests show on the tapped service's proxies with the right
// fields, inbound and outbound, refused ones too; --path, --method and
// --to filter; no credential sent by the client appears in any output;
// killing the CLI stops the taps on the proxies within two seconds.
func TestTap(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, webService)
	web := cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil)})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})

	all := cp.tap(t, "web")
	posts := cp.tap(t, "web", "--path", "/api/", "--method", "post")
	toWeb := cp.tap(t, "client", "--to", "web")
	toOther := cp.tap(t, "client", "--to", "other")
	clientAll := cp.tap(t, "client")
	web.waitTaps(t, 2)
	client.waitTaps(t, 3)

	c := client.client()
	send := func(method, path string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://web"+path+"?token="+tapSecret, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tapSecret)
		req.Header.Set("Cookie", "session="+tapSecret)
		req.Header.Set("X-Api-Key", tapSecret)
		req.Header.Set("User-Agent", "tap-e2e")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d", method, path, resp.StatusCode)
		}
	}
	for range 3 {
		send("GET", "/api/a")
	}
	for range 2 {
		send("POST", "/api/b")
	}
	send("GET", "/other")
	if code, _, err := get(c, "http://nosuch/x"); err != nil || code != 503 { // refused by the proxy
		t.Fatalf("unknown service: %d %v", code, err)
	}

	waitEvents := func(r *tapRun, n int, what string) []tapLine {
		t.Helper()
		var evs []tapLine
		eventually(t, 10*time.Second, what, func() bool {
			evs, _ = r.lines()
			return len(evs) >= n
		})
		time.Sleep(300 * time.Millisecond) // more than n would arrive by now
		evs, _ = r.lines()
		if len(evs) != n {
			t.Fatalf("%s: %d events, want %d: %+v", what, len(evs), n, evs)
		}
		return evs
	}
	inbound := waitEvents(all, 6, "tap web: every inbound request")
	for _, e := range inbound {
		if e.Direction != "inbound" || e.Status != 200 || e.SourceIdentity != clientID || e.DestinationIdentity != webID ||
			e.DestinationService != "web.default" || e.ResponseFlags != "-" || e.LatencyMS <= 0 || e.Headers["user-agent"] != "tap-e2e" ||
			(e.Path != "/api/a" && e.Path != "/api/b" && e.Path != "/other") {
			t.Errorf("tap web event %+v", e)
		}
	}
	for _, e := range waitEvents(posts, 2, "tap web --path /api/ --method post") {
		if e.Method != "POST" || e.Path != "/api/b" {
			t.Errorf("filtered event %+v", e)
		}
	}
	for _, e := range waitEvents(toWeb, 6, "tap client --to web") {
		if e.Direction != "outbound" || e.SourceIdentity != clientID || e.DestinationIdentity != webID || e.DestinationService != "web.default" || e.Authority != "web" {
			t.Errorf("outbound event %+v", e)
		}
	}
	var refused bool
	for _, e := range waitEvents(clientAll, 7, "tap client: six to web and the refused one") {
		// The proxy asks the control plane for the unknown name and gets a
		// service without endpoints: 503 UH (NC when the name is not one).
		refused = refused || (e.Path == "/x" && e.Status == 503 && (e.ResponseFlags == "UH" || e.ResponseFlags == "NC"))
	}
	if !refused {
		t.Error("the refused request (no such service) is not in the tap")
	}
	if evs, _ := toOther.lines(); len(evs) != 0 {
		t.Errorf("tap client --to other: %d events, want none: %+v", len(evs), evs)
	}
	for _, r := range []*tapRun{all, posts, toWeb, toOther, clientAll} {
		if out := r.proc.out.String(); strings.Contains(out, tapSecret) {
			t.Fatalf("a tap printed the client's secret:\n%s", out)
		}
	}

	killed := time.Now()
	for _, r := range []*tapRun{all, posts, toWeb, toOther, clientAll} {
		r.kill()
	}
	for _, s := range []*sidecar{web, client} {
		eventually(t, 2*time.Second, "proxy "+s.name+" to stop its taps after the CLI went away", func() bool {
			return s.metric(t, "trellis_proxy_taps_running") == "0"
		})
	}
	t.Logf("taps stopped on the proxies %v after the CLIs were killed", time.Since(killed).Round(time.Millisecond))
}

// TestTapRateBound: under a burst of 300 requests a tap with --max-rps 5
// shows at most the bucket's burst plus its rate over the burst's length,
// and says how many it skipped: shown + skipped = sent.
func TestTapRateBound(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, webService)
	web := cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil)})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	tr := cp.tap(t, "web", "--max-rps", "5")
	web.waitTaps(t, 1)

	const sent = 300
	c := client.client()
	began := time.Now()
	var wg sync.WaitGroup
	for g := range 10 {
		wg.Go(func() {
			for i := range sent / 10 {
				if code, _, err := get(c, "http://web/burst/"+strconv.Itoa(g*100+i)); err != nil || code != 200 {
					t.Errorf("burst request: %d %v", code, err)
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(began)
	var shown []tapLine
	var skipped uint64
	eventually(t, 10*time.Second, "shown + skipped to add up to the requests sent", func() bool {
		shown, skipped = tr.lines()
		return uint64(len(shown))+skipped >= sent
	})
	bound := 5 + 5*int(took.Seconds()+1)
	if len(shown) > bound || uint64(len(shown))+skipped != sent {
		t.Fatalf("burst of %d in %v: %d shown (bound %d), %d skipped", sent, took, len(shown), bound, skipped)
	}
	t.Logf("burst of %d in %v: %d shown, %d skipped", sent, took.Round(time.Millisecond), len(shown), skipped)
}
