package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/stats"
)

func newTopCmd(g *globals) *cobra.Command {
	var f statFlags
	cmd := &cobra.Command{
		Use:   "top SERVICE",
		Short: "Show a service's busiest paths right now: requests per second, success rate, p99",
		Long: `Show the paths callers sent SERVICE most over a recent window, busiest
first, with their RPS, SUCCESS (not 5xx) and p99 latency, merged across
the callers' proxies.

Each calling proxy keeps the 16 busiest paths per service per 10-second
window (the space-saving algorithm, so memory stays bounded whatever the
paths); a path an HTTPRoute matched with a regular expression is shown as
that expression, so paths with ids in them are one row. Counts of a path
that entered the top list late are a lower bound.`,
		Example: `  trellis top orders
  trellis top orders --window 30s -w
  trellis top orders.shop -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := stats.Query{Kind: stats.KindPath, Service: args[0], Window: f.window}
			if !cmd.Flags().Changed("window") {
				q.Window = stats.PathWindows * stats.Width
			}
			if err := checkOutput("top", f.output, "table", "json"); err != nil {
				return err
			}
			if err := q.Check(); err != nil {
				return fmt.Errorf("top: --%w", err)
			}
			fetch, err := statSource(g, "")
			if err != nil {
				return err
			}
			return runStat(cmd.Context(), g.stdout, f, func(ctx context.Context) (stats.Result, error) { return fetch(ctx, q) })
		},
	}
	f.register(cmd, true)
	return cmd
}
