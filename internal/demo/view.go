package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"trellis.dev/trellis/internal/telemetry"
)

// scraper reads every app proxy's /metrics and names each proxy's inbound
// series after its row, so the two inventory versions (same service) stay
// apart.
type scraper struct {
	members []*member
	client  *http.Client
	last    map[*member]telemetry.Sample // last good scrape, kept when one fails
}

func newScraper(ms []*member) *scraper {
	return &scraper{members: ms, client: &http.Client{Timeout: 2 * time.Second}, last: map[*member]telemetry.Sample{}}
}

func (s *scraper) scrape(ctx context.Context, log *slog.Logger) telemetry.Sample {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range s.members {
		wg.Go(func() {
			smp, err := scrapeOne(ctx, s.client, m.admin)
			if err != nil {
				log.Warn("scrape failed; keeping the last sample", "proxy", m.label(), "err", err)
				return
			}
			mu.Lock()
			s.last[m] = smp.Relabel(m.row)
			mu.Unlock()
		})
	}
	wg.Wait()
	all := telemetry.NewSample()
	for _, smp := range s.last {
		all.Add(smp)
	}
	return all
}

func scrapeOne(ctx context.Context, client *http.Client, admin string) (telemetry.Sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return telemetry.Sample{}, err
	}
	// The text format; promhttp would otherwise pick by Accept.
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return telemetry.Sample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return telemetry.Sample{}, fmt.Errorf("GET /metrics: status %d", resp.StatusCode)
	}
	return telemetry.ParseMetrics(io.LimitReader(resp.Body, 16<<20))
}

// view prints the demo's header and tables.
type view struct {
	o     Options
	start time.Time
	cmd   string // the apply command shown to the user
}

func (v *view) header(w io.Writer) {
	fmt.Fprintf(w, "Trellis demo: frontend → orders → payments, inventory (v1/v2 split by HTTPRoute inventory-split), %d rps\n", v.o.RPS)
	fmt.Fprintf(w, "fault:     25%% of calls to payments held 150ms by the mesh (FaultInjection payments-delay): orders' p99 climbs, payments' does not\n")
	fmt.Fprintf(w, "limit:     frontend admits 40 rps (RateLimitPolicy frontend): the rest get 429, counted in LIMITED\n")
	fmt.Fprintf(w, "data dir:  %s (logs in %s/logs)\n", v.o.DataDir, v.o.DataDir)
	if v.cmd != "" {
		fmt.Fprintf(w, "move the inventory split (or use inventory-v2-only.yaml):\n  %s\n", v.cmd)
	}
	if v.o.Plain {
		fmt.Fprintf(w, "a table every %s; Ctrl-C to stop\n", refreshEvery)
	}
}

// lines prints one refresh as plain lines, for output that is not a
// terminal: a time line, then the table.
func (v *view) lines(rows []telemetry.Row, now time.Time, window time.Duration) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "\n%s — last %.1fs, running for %s\n", now.Format("15:04:05"), window.Seconds(), now.Sub(v.start).Round(time.Second))
	_ = telemetry.FormatTable(&b, rows)
	_, _ = v.o.Out.Write(b.Bytes())
}

// draw redraws the screen in place: cursor home, clear, header, table.
func (v *view) draw(rows []telemetry.Row, now time.Time, window time.Duration) {
	var b bytes.Buffer
	b.WriteString("\x1b[H\x1b[2J")
	v.header(&b)
	fmt.Fprintf(&b, "\nlast %.1fs — running for %s, Ctrl-C to stop\n\n", window.Seconds(), now.Sub(v.start).Round(time.Second))
	_ = telemetry.FormatTable(&b, rows)
	_, _ = v.o.Out.Write(b.Bytes())
}

func (v *view) final(res Result) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "\nWhole run (%s), success rate %.2f%%:\n\n", res.Duration.Round(100*time.Millisecond), 100*res.SuccessRate())
	_ = telemetry.FormatTable(&b, res.Rows)
	if res.Load.Sent > 0 {
		fmt.Fprintf(&b, "\nload generator: %d requests sent, %d failed\n", res.Load.Sent, res.Load.Failed)
	}
	if _, err := v.o.Out.Write(b.Bytes()); err == nil || v.o.Terminal == nil {
		return
	}
	// Out is gone (its reader died with the Ctrl-C): the user still sees
	// the final table on the terminal, if there is one.
	if tty, err := v.o.Terminal(); err == nil {
		_, _ = tty.Write(b.Bytes())
		tty.Close()
	}
}
