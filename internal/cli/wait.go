package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"trellis.dev/trellis/internal/control"
	"trellis.dev/trellis/internal/push"
)

// pollSlack is how much longer than the long-poll itself the HTTP request
// may take; pollPause keeps a server that answers early (an older one that
// ignores wait) from being asked in a tight loop.
const (
	pollSlack = 15 * time.Second
	pollPause = 200 * time.Millisecond
)

// waitForRevision long-polls /v1/proxies until every connected proxy runs
// rev or later, one refused it, or timeout passes.
func waitForRevision(ctx context.Context, c *adminClient, w io.Writer, rev int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var list []push.ProxyStatus
	for {
		poll := min(time.Until(deadline), control.MaxProxiesWait).Round(time.Millisecond)
		if poll <= 0 {
			break
		}
		asked := time.Now()
		path := fmt.Sprintf("/v1/proxies?minRevision=%d&wait=%s", rev, poll)
		list = nil
		if err := c.withTimeout(poll+pollSlack).do(ctx, "GET", path, nil, &list); err != nil {
			return fmt.Errorf("apply: revision %d is applied, but waiting for the proxies failed: %w", rev, err)
		}
		if push.Settled(list, rev) {
			break
		}
		if early := time.Since(asked) < poll/2; early && !sleepUntil(ctx, min(pollPause, time.Until(deadline))) {
			return ctx.Err()
		}
	}
	var behind []push.ProxyStatus
	for _, p := range list {
		if !p.AtRevision(rev) {
			behind = append(behind, p)
		}
	}
	if len(behind) > 0 {
		return notAtRevision(rev, timeout, len(list), behind)
	}
	switch len(list) {
	case 0:
		fmt.Fprintf(w, "revision %d applied; no proxies connected\n", rev)
	case 1:
		fmt.Fprintf(w, "revision %d applied; the 1 connected proxy runs it\n", rev)
	default:
		fmt.Fprintf(w, "revision %d applied; all %d connected proxies run it\n", rev, len(list))
	}
	return nil
}

func sleepUntil(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// notAtRevision names the proxies that did not get to rev: whether one
// refused it (no use waiting) or time ran out, with each one's revision and
// error.
func notAtRevision(rev int64, timeout time.Duration, total int, behind []push.ProxyStatus) error {
	why := fmt.Sprintf("did not run it within %s", timeout)
	hint := "They may still get there: see 'trellis proxy-status'."
	for _, p := range behind {
		if p.Refused(rev) {
			why = "did not run it (refused: NACKED)"
			hint = "Fix what they refused and apply again; 'trellis proxy-status' shows them."
			break
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "apply: revision %d is applied, but %d of %d proxies %s; they keep their last good config:\n", rev, len(behind), total, why)
	tw := tabwriter.NewWriter(&b, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "  PROXY\tSERVICE\tREVISION\tSTATE\tERROR")
	for _, p := range behind {
		fmt.Fprintf(tw, "  %s\t%s.%s\t%s\t%s\t%s\n", p.NodeID, p.Service, p.Namespace, revisionText(p.Revision), p.State, p.Error)
	}
	tw.Flush()
	b.WriteString(hint)
	return errors.New(b.String())
}

// revisionText shows 0 (nothing ACKed on this stream yet) as "-".
func revisionText(rev int64) string {
	if rev <= 0 {
		return "-"
	}
	return strconv.FormatInt(rev, 10)
}
