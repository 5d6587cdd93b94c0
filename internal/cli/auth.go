package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/control"
)

func newAuthCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Explain authorization decisions",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newAuthCheckCmd(g))
	return cmd
}

func newAuthCheckCmd(g *globals) *cobra.Command {
	var (
		req     control.AuthzCheckRequest
		headers []string
		output  string
	)
	cmd := &cobra.Command{
		Use:   "check --from SPIFFE_ID --to SERVICE[.NAMESPACE]",
		Short: "Explain whether a caller may make a request to a service, and which rule decides",
		Long: `Explain how SERVICE's proxy would decide a request from --from: allowed or
denied, by which AuthorizationPolicy and rule, and for every policy that
applies (DENY policies first, then ALLOW) which condition each rule failed.

The control plane compiles SERVICE's policies exactly as it does for
SERVICE's proxies and runs the proxy's own decision code, so the answer is
what the proxy does. The port's protocol comes from the Service: on a grpc
port --path is the call (/package.Service/Method), on a tcp port only the
caller and the port count. Without --port, the Service's first port.
An empty --from explains a plaintext (unauthenticated) request.

Exits 0 whether the request would be allowed or denied.`,
		Example: `  trellis auth check --from spiffe://trellis.local/ns/shop/sa/web --to orders.shop
  trellis auth check --from spiffe://trellis.local/ns/shop/sa/web --to orders.shop --method DELETE --path /orders/7
  trellis auth check --from spiffe://trellis.local/ns/ops/sa/batch --to orders.shop --port 9090 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput("auth check", output, "text", "json", "yaml"); err != nil {
				return err
			}
			if req.To == "" {
				return fmt.Errorf("auth check: --to is required: the destination service (name or name.namespace)")
			}
			if err := parseHeaders(headers, &req); err != nil {
				return err
			}
			req.Method = strings.ToUpper(req.Method)
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			var resp control.AuthzCheckResponse
			if err := c.do(cmd.Context(), "POST", "/v1/authz/check", &req, &resp); err != nil {
				return fmt.Errorf("auth check: %w", err)
			}
			if output != "text" {
				return printValue(g.stdout, output, resp)
			}
			return printAuthzCheck(g.stdout, &req, &resp)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.From, "from", "", "the caller's SPIFFE ID (empty: a plaintext request)")
	f.StringVar(&req.To, "to", "", "the destination service: name or name.namespace (namespace default)")
	f.Uint32Var(&req.Port, "port", 0, "the service port (default: the Service's first port)")
	f.StringVar(&req.Method, "method", "GET", "the HTTP method")
	f.StringVar(&req.Path, "path", "/", "the request path (on a grpc port: /package.Service/Method)")
	f.StringArrayVar(&headers, "header", nil, `a request header, "Name: value" (repeatable)`)
	f.StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")
	return cmd
}

func parseHeaders(hs []string, req *control.AuthzCheckRequest) error {
	for _, h := range hs {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("auth check: --header %q: want \"Name: value\"", h)
		}
		if req.Headers == nil {
			req.Headers = map[string][]string{}
		}
		k = strings.TrimSpace(k)
		req.Headers[k] = append(req.Headers[k], strings.TrimSpace(v))
	}
	return nil
}

func printAuthzCheck(w io.Writer, req *control.AuthzCheckRequest, r *control.AuthzCheckResponse) error {
	from := req.From
	if from == "" {
		from = "(no identity: plaintext)"
	}
	what := req.Method + " " + req.Path
	if r.Protocol == "tcp" {
		what = "TCP connection"
	}
	fmt.Fprintf(w, "%s  %s to %s port %d (%s)\n", strings.ToUpper(r.Decision), what, r.Service, r.Port, r.Protocol)
	fmt.Fprintf(w, "from:     %s\n", from)
	switch {
	case r.Policy != "":
		fmt.Fprintf(w, "decided:  %s: AuthorizationPolicy %s, rule %d\n", r.Reason, r.Policy, *r.Rule)
	case r.Reason == "default":
		fmt.Fprintf(w, "decided:  the mesh default (%s): no ALLOW AuthorizationPolicy applies to %s\n", r.DefaultAction, r.Service)
	default:
		fmt.Fprintf(w, "decided:  %s: ALLOW policies apply to %s and no rule of theirs matches\n", r.Reason, r.Service)
	}
	fmt.Fprintf(w, "default:  %s (trellis control --default-authorization)\nrevision: %d\n", r.DefaultAction, r.Revision)
	if len(r.Policies) == 0 {
		fmt.Fprintf(w, "\nno AuthorizationPolicy applies to %s\n", r.Service)
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "POLICY\tACTION\tRULE\tRESULT")
	for _, p := range r.Policies {
		for _, rt := range p.Rules {
			res := "matched"
			if !rt.Matched {
				res = "no match: " + rt.Failed
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", p.Name, p.Action, rt.Index, res)
		}
	}
	return tw.Flush()
}
