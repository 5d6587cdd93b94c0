package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/xds"
)

// xDS clients in proxy-status: proxyless gRPC clients and Envoys on the
// control plane's ADS, listed after the Trellis proxies.

// xdsClientList is /v1/xds-clients; nil from a control plane that has no
// such API (older than the xDS adapter).
func xdsClientList(ctx context.Context, c *adminClient) ([]xds.ClientStatus, error) {
	var list []xds.ClientStatus
	if err := c.do(ctx, "GET", "/v1/xds-clients", nil, &list); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			return nil, nil
		}
		return nil, err
	}
	return list, nil
}

// proxyStatusValue is what -o json and -o yaml print: the proxies, then
// the xDS clients (each with kind "xds"), in one list.
func proxyStatusValue(list []push.ProxyStatus, clients []xds.ClientStatus) any {
	if len(clients) == 0 {
		return list
	}
	out := make([]any, 0, len(list)+len(clients))
	for _, p := range list {
		out = append(out, p)
	}
	for _, c := range clients {
		out = append(out, c)
	}
	return out
}

// xdsTypeNames are the short names of the resource types, in the order
// a client asks for them.
var xdsTypeNames = []struct{ url, short string }{
	{resource.ListenerType, "LDS"},
	{resource.RouteType, "RDS"},
	{resource.ClusterType, "CDS"},
	{resource.EndpointType, "EDS"},
}

// printXDSClients prints the xDS clients' table, after a blank line; no
// clients, nothing.
func printXDSClients(w io.Writer, clients []xds.ClientStatus, now time.Time) error {
	if len(clients) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "XDS CLIENT\tKIND\tIDENTITY\tMODE\tACKED\tCONNECTED\tERROR")
	for _, c := range clients {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(c.NodeID), c.Kind, orDash(c.Identity), c.Mode,
			ackedText(c.Acked), connectedText(c.ConnectedAt, now), c.Error)
	}
	return tw.Flush()
}

// ackedText is "LDS=v CDS=v ..." for the types acknowledged, others after
// the four xDS ones by type URL; "-" when none is.
func ackedText(acked map[string]string) string {
	var parts []string
	known := map[string]bool{}
	for _, t := range xdsTypeNames {
		known[t.url] = true
		if v, ok := acked[t.url]; ok {
			parts = append(parts, t.short+"="+v)
		}
	}
	var other []string
	for url, v := range acked {
		if !known[url] {
			other = append(other, url[strings.LastIndexByte(url, '.')+1:]+"="+v)
		}
	}
	sort.Strings(other)
	parts = append(parts, other...)
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func connectedText(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}
