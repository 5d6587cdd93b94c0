package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/control"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/tap"
)

type tapFlags struct {
	namespace, path, method, to, output string
	maxRPS                              uint32
	duration                            time.Duration
}

func newTapCmd(g *globals) *cobra.Command {
	var f tapFlags
	cmd := &cobra.Command{
		Use:   "tap SERVICE",
		Short: "Stream the requests a service's proxies see, live",
		Long: `Stream the requests SERVICE's proxies see, inbound (calls to SERVICE) and
outbound (calls SERVICE makes), as they finish: time, direction, method,
authority, path, status, latency, response flags, source and destination
identity, route. Refused requests (authorization, rate limits, no route)
show too, with their flag.

Each proxy sends at most --max-rps events per second (a token bucket with a
second's burst); what it matched beyond that is counted and reported as
skipped on stderr. Bodies, query strings and header values are never
recorded, except content-type, user-agent and x-request-id.

The tap stops on every proxy when this command ends (Ctrl-C, --duration, or
the connection drops). It needs an admin token: a tap shows live traffic,
which read-only tokens do not see. Every tap is in the audit log.

-o json prints the admin API's lines: {"type":"event",...} per request and
{"type":"skipped","proxy":...,"count":N}.`,
		Example: `  trellis tap orders
  trellis tap orders --path /api/ --method POST
  trellis tap frontend --to orders --max-rps 10
  trellis tap payments.shop -o json --duration 30s`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("tap", f.output, "table", "json"); err != nil {
				return err
			}
			svc, err := meshname.ParseService(args[0], f.namespace, "")
			if err != nil {
				return fmt.Errorf("tap: SERVICE: %w", err)
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if f.duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, f.duration)
				defer cancel()
			}
			return runTap(ctx, c, g, svc, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.namespace, "namespace", "n", "default", "namespace of SERVICE (and of --to without one)")
	fl.StringVar(&f.path, "path", "", "only requests whose path starts with this prefix")
	fl.StringVar(&f.method, "method", "", "only requests of this method (GET, POST, ...)")
	fl.StringVar(&f.to, "to", "", "only requests to this destination service (name or name.namespace); SERVICE's own inbound requests are to SERVICE")
	fl.Uint32Var(&f.maxRPS, "max-rps", tap.DefaultMaxRPS, fmt.Sprintf("at most this many events per second from each proxy (1-%d)", tap.MaxMaxRPS))
	fl.DurationVar(&f.duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	fl.StringVarP(&f.output, "output", "o", "table", "output format: table or json (one JSON object per line)")
	return cmd
}

// runTap streams the tap until ctx ends or the control plane closes it.
func runTap(ctx context.Context, c *adminClient, g *globals, svc meshname.Name, f tapFlags) error {
	q := url.Values{}
	for k, v := range map[string]string{"path": f.path, "method": f.method, "to": f.to} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("maxRps", strconv.FormatUint(uint64(f.maxRPS), 10))
	body, err := c.stream(ctx, "/v1/tap/"+url.PathEscape(svc.Namespace)+"/"+url.PathEscape(svc.Name)+"?"+q.Encode())
	if err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	defer body.Close()
	var events, skipped uint64
	defer func() {
		fmt.Fprintf(g.stderr, "tap: %d requests shown, %d skipped (over --max-rps or behind)\n", events, skipped)
	}()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l control.TapLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("tap: control plane sent a bad line: %w", err)
		}
		switch l.Type {
		case "event":
			events++
		case "skipped":
			skipped += l.Count
		}
		if f.output == "json" {
			if l.Type != "started" {
				fmt.Fprintln(g.stdout, sc.Text())
			}
			continue
		}
		printTapLine(g, svc, l, f.maxRPS)
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("tap: stream from the control plane broke: %w", err)
	}
	if ctx.Err() == nil {
		return errors.New("tap: the control plane ended the tap (shutting down?)")
	}
	return nil
}

// printTapLine writes one line for a human: events to stdout, the rest to
// stderr so stdout stays one request per line.
func printTapLine(g *globals, svc meshname.Name, l control.TapLine, maxRPS uint32) {
	switch l.Type {
	case "started":
		n := 0
		if l.Proxies != nil {
			n = *l.Proxies
		}
		fmt.Fprintf(g.stderr, "tap: watching %s on %d proxies (and any that join); Ctrl-C to stop\n", svc, n)
	case "skipped":
		where := "on " + l.Proxy + " (over --max-rps " + strconv.FormatUint(uint64(maxRPS), 10) + ")"
		if l.Proxy == "" {
			where = "by the control plane (this terminal fell behind)"
		}
		fmt.Fprintf(g.stderr, "tap: %d requests skipped %s\n", l.Count, where)
	case "event":
		fmt.Fprintln(g.stdout, formatTapEvent(l.TapEvent, l.Proxy))
	}
}

// formatTapEvent is one request on one line, as Linkerd's tap reads.
func formatTapEvent(e *control.TapEvent, proxy string) string {
	if e == nil {
		return ""
	}
	t, err := time.Parse(time.RFC3339Nano, e.Time)
	ts := e.Time
	if err == nil {
		ts = t.Local().Format("15:04:05.000")
	}
	dir := "out"
	if e.Direction == "inbound" {
		dir = "in "
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s %s%s %d %.1fms flags=%s", ts, dir, proxy, e.Method, e.Authority, e.Path, e.Status, e.LatencyMS, e.ResponseFlags)
	if e.GRPCStatus != "" {
		fmt.Fprintf(&b, " grpc=%s", e.GRPCStatus)
	}
	fmt.Fprintf(&b, " src=%s dst=%s", orDash(e.SourceIdentity), orDash(e.DestinationIdentity))
	if e.Route != "" {
		fmt.Fprintf(&b, " route=%s", e.Route)
	}
	return b.String()
}

// stream sends a GET and returns the answer's body to read as it comes
// (no client timeout: it ends with ctx).
func (c *adminClient) stream(ctx context.Context, path string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.withTimeout(0).http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("control plane at %s: %w", c.base, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, decodeAPIError(resp.StatusCode, data)
	}
	return resp.Body, nil
}
