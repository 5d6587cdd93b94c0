package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/control"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke join tokens and admin API tokens",
		Long: `Tokens are how a proxy proves who it is the first time, and how people and
tools other than the data dir's admin-token use the admin API.

A proxy token (the default role) names one identity, ns/<namespace>/sa/<sa>:
a proxy presenting it (trellis proxy --token-file) obtains certificates for
that identity and no other, until the token expires, is revoked or has been
used --uses times. Renewals use the proxy's current certificate, so a
short-lived single-use token suffices to join.

Admin and read-only tokens are for the admin API (read-only: GET and HEAD
only); a proxy token cannot use it.

The secret is printed once, at create, on stdout (or written to --file,
mode 0600); the control plane stores only its SHA-256.`,
	}
	cmd.AddCommand(newTokenCreateCmd(g), newTokenListCmd(g), newTokenRevokeCmd(g))
	return cmd
}

func newTokenCreateCmd(g *globals) *cobra.Command {
	var (
		req    control.CreateTokenRequest
		ttl    time.Duration
		file   string
		output string
	)
	cmd := &cobra.Command{
		Use:   "create --service-account SA [--namespace NS] [--ttl 1h] [--uses N]",
		Short: "Create a token and print its secret (shown only this once)",
		Example: `  trellis token create --service-account orders --ttl 10m > orders.token
  trellis proxy --service orders --token-file orders.token --app 127.0.0.1:8080
  trellis token create --service-account web --namespace shop --uses 3 --file web.token
  trellis token create --role read-only --ttl 24h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput("token create", output, "secret", "json", "yaml"); err != nil {
				return err
			}
			if !cmd.Flags().Changed("uses") && req.Role != "" && req.Role != control.RoleProxy {
				req.Uses = 0 // the default 1 is a proxy token's
			}
			if !cmd.Flags().Changed("ttl") && req.Role != "" && req.Role != control.RoleProxy {
				ttl = 0
			}
			if ttl > 0 {
				req.TTL = ttl.String()
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			var resp control.CreateTokenResponse
			if err := c.do(cmd.Context(), "POST", "/v1/tokens", req, &resp); err != nil {
				return fmt.Errorf("token create: %w", err)
			}
			if file != "" {
				if err := writeSecret(file, resp.Secret); err != nil {
					return fmt.Errorf("token create: %w", err)
				}
				resp.Secret = ""
			}
			fmt.Fprintf(g.stderr, "token %s created: %s\n", resp.Token.ID, tokenSummary(resp.Token))
			switch {
			case output == "json" || output == "yaml":
				return printValue(g.stdout, output, resp)
			case file == "":
				fmt.Fprintln(g.stdout, resp.Secret)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.ServiceAccount, "service-account", "", "service account the proxy token is for (required for proxy tokens)")
	f.StringVar(&req.Namespace, "namespace", "", "namespace of the service account (default \"default\")")
	f.DurationVar(&ttl, "ttl", time.Hour, "how long the token works (admin and read-only tokens: default no expiry)")
	f.IntVar(&req.Uses, "uses", 1, "certificates a proxy token obtains before it is spent; 0 for no bound")
	f.StringVar(&req.Role, "role", control.RoleProxy, "proxy, admin or read-only")
	f.StringVar(&file, "file", "", "write the secret to this file (mode 0600) instead of stdout")
	f.StringVarP(&output, "output", "o", "secret", "output: secret (the secret alone), json or yaml (with the secret)")
	return cmd
}

// writeSecret creates path 0600 (refusing to overwrite: an old token file
// is the operator's to remove).
func writeSecret(path, secret string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("--file %s exists; remove it or choose another", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(secret + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func tokenSummary(t control.Token) string {
	s := "role " + t.Role
	if t.Role == control.RoleProxy {
		s += fmt.Sprintf(", identity ns/%s/sa/%s, %s", t.Namespace, t.ServiceAccount, usesText(t))
	}
	if !t.Expires.IsZero() {
		s += ", expires " + t.Expires.UTC().Format(time.RFC3339)
	}
	return s
}

func usesText(t control.Token) string {
	if t.UsesLeft() < 0 {
		return "unbounded uses"
	}
	return fmt.Sprintf("%d of %d uses left", t.UsesLeft(), t.MaxUses)
}

func newTokenListCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput("token list", output, "table", "json", "yaml"); err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			var list []control.Token
			if err := c.do(cmd.Context(), "GET", "/v1/tokens", nil, &list); err != nil {
				return fmt.Errorf("token list: %w", err)
			}
			if output != "table" {
				return printValue(g.stdout, output, list)
			}
			return printTokens(g.stdout, list, time.Now())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	return cmd
}

func printTokens(w io.Writer, list []control.Token, now time.Time) error {
	if len(list) == 0 {
		fmt.Fprintln(w, "No tokens. Create one with 'trellis token create --service-account SA'.")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tIDENTITY\tUSES LEFT\tEXPIRES\tSTATE")
	for _, t := range list {
		ident, uses := "-", "-"
		if t.Role == control.RoleProxy {
			ident = "ns/" + t.Namespace + "/sa/" + t.ServiceAccount
			uses = "unbounded"
			if n := t.UsesLeft(); n >= 0 {
				uses = strconv.Itoa(n)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Role, ident, uses, expiryText(t.Expires, now), tokenState(t, now))
	}
	return tw.Flush()
}

func tokenState(t control.Token, now time.Time) string {
	switch {
	case t.Revoked:
		return "revoked"
	case !t.Expires.IsZero() && !now.Before(t.Expires):
		return "expired"
	case t.UsesLeft() == 0:
		return "spent"
	}
	return "valid"
}

func newTokenRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ID",
		Short:   "Revoke a token: it obtains no more certificates and opens no admin API request",
		Example: `  trellis token revoke 3f9c2a1b7d4e6f80`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			var t control.Token
			if err := c.do(cmd.Context(), "DELETE", "/v1/tokens/"+args[0], nil, &t); err != nil {
				return fmt.Errorf("token revoke: %w", err)
			}
			fmt.Fprintf(g.stdout, "token %s revoked\n", t.ID)
			return nil
		},
	}
}

func newAuditCmd(g *globals) *cobra.Command {
	var (
		output string
		limit  int
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log: every config change and token and CA operation",
		Long: `Show the control plane's append-only audit log, oldest first: who (the
admin-token, a token id, or the serial of a renewing proxy's certificate),
what (apply, delete, token.create, token.revoke, ca.issue), on what, when,
and the store revision of the change.`,
		Example: `  trellis audit
  trellis audit --limit 20 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput("audit", output, "table", "json", "yaml"); err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			var entries []control.AuditEntry
			if err := c.do(cmd.Context(), "GET", "/v1/audit?limit="+strconv.Itoa(limit), nil, &entries); err != nil {
				return fmt.Errorf("audit: %w", err)
			}
			if output != "table" {
				return printValue(g.stdout, output, entries)
			}
			return printAudit(g.stdout, entries)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	cmd.Flags().IntVar(&limit, "limit", 0, "show only the newest N entries (0: all)")
	return cmd
}

func printAudit(w io.Writer, entries []control.AuditEntry) error {
	if len(entries) == 0 {
		fmt.Fprintln(w, "The audit log is empty.")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "REVISION\tTIME\tWHO\tACTION\tTARGET\tDETAIL")
	for _, e := range entries {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Revision, e.Time.UTC().Format(time.RFC3339), e.Who, e.Action, orDash(e.Target), orDash(e.Detail))
	}
	return tw.Flush()
}
