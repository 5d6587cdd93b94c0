package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/ca"
)

func newCACmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Rotate the mesh's certificate authority and show its state",
		Long: `The control plane's CA is a root and an intermediate it generated (kept in
its store) or a signing certificate from files (--ca-cert, --ca-key,
--ca-root). 'trellis ca rotate' replaces a generated root and intermediate
without downtime, in phases, waiting at each for every registered proxy:

  propagating  the new root joins the trust bundle; the old one still issues
  reissuing    the new root and intermediate issue; proxies re-certify within
               seconds; the old root stays trusted
  idle         the old root has left the bundle

A CA from files is its owner's to rotate; 'trellis ca rotate' refuses it.`,
	}
	cmd.AddCommand(newCARotateCmd(g), newCAStatusCmd(g))
	return cmd
}

func newCARotateCmd(g *globals) *cobra.Command {
	var (
		wait    bool
		timeout time.Duration
		output  string
	)
	cmd := &cobra.Command{
		Use:   "rotate [--wait [--timeout 10m]]",
		Short: "Rotate the CA's root and intermediate (admin token)",
		Example: `  trellis ca rotate --wait
  trellis ca rotate && trellis ca status`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput("ca rotate", output, "table", "json", "yaml"); err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			var st ca.RotationStatus
			if err := c.do(cmd.Context(), "POST", "/v1/ca/rotate", nil, &st); err != nil {
				return fmt.Errorf("ca rotate: %w", err)
			}
			if st.AlreadyRunning {
				fmt.Fprintln(g.stderr, "a rotation is already in progress; following it")
			}
			if wait {
				if st, err = waitRotation(cmd.Context(), g.dataDir, timeout); err != nil {
					printRotation(g.stderr, st)
					return fmt.Errorf("ca rotate: %w", err)
				}
			}
			if output != "table" {
				return printValue(g.stdout, output, st)
			}
			printRotation(g.stdout, st)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&wait, "wait", false, "wait until the rotation is complete (the old root has left the bundle)")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "with --wait, give up after this long (the rotation goes on)")
	f.StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	return cmd
}

// waitRotation polls the status until the rotation is idle again. Each
// poll reads the data dir's ca.crt afresh: the control plane's own
// certificate moves to the new root midway, and the control plane adds
// that root to ca.crt before it does.
func waitRotation(ctx context.Context, dataDir string, timeout time.Duration) (ca.RotationStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var st ca.RotationStatus
	for {
		st = ca.RotationStatus{} // omitted fields must not survive a poll
		c, err := newAdminClient(dataDir)
		if err != nil {
			return st, err
		}
		err = c.do(ctx, "GET", "/v1/ca/status", nil, &st)
		c.http.CloseIdleConnections()
		if err != nil {
			return st, err
		}
		if st.Phase == ca.PhaseIdle {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("still %s after %s, waiting for %s (%d of %d proxies behind); it goes on: see 'trellis ca status'",
				st.Phase, timeout, st.Waiting, len(st.Lagging), st.Proxies)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func newCAStatusCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the CA's rotation phase, its roots and the proxies a rotation waits for",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput("ca status", output, "table", "json", "yaml"); err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			var st ca.RotationStatus
			if err := c.do(cmd.Context(), "GET", "/v1/ca/status", nil, &st); err != nil {
				return fmt.Errorf("ca status: %w", err)
			}
			if output != "table" {
				return printValue(g.stdout, output, st)
			}
			printRotation(g.stdout, st)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	return cmd
}

// printRotation prints a status as kubectl describe would: fields, then
// the lagging proxies as a table.
func printRotation(w io.Writer, st ca.RotationStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	phase := st.Phase
	if st.Phase != ca.PhaseIdle {
		phase += fmt.Sprintf(" (since %s; started %s by %s)",
			st.PhaseSince.UTC().Format(time.RFC3339), st.Started.UTC().Format(time.RFC3339), st.By)
	}
	fmt.Fprintf(tw, "PHASE:\t%s\n", phase)
	if st.Waiting != "" {
		fmt.Fprintf(tw, "WAITING FOR:\t%s\n", st.Waiting)
	}
	fmt.Fprintf(tw, "ISSUING ROOT:\tsha256:%s\n", st.IssuingRoot)
	fmt.Fprintf(tw, "TRUST BUNDLE:\tsha256:%s\n", strings.Join(st.Bundle, ", sha256:"))
	if st.Phase != ca.PhaseIdle {
		fmt.Fprintf(tw, "PROXIES:\t%d registered, %d behind\n", st.Proxies, len(st.Lagging))
	}
	_ = tw.Flush()
	if len(st.Lagging) == 0 {
		return
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nNODE\tWAITING BECAUSE")
	for _, l := range st.Lagging {
		fmt.Fprintf(tw, "%s\t%s\n", l.Node, l.Reason)
	}
	_ = tw.Flush()
}
