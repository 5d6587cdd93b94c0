package cli

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"trellis.dev/trellis/internal/demo"
)

func newDemoCmd(g *globals) *cobra.Command {
	var o demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the demo shop in the mesh and show its traffic live",
		Long: `Run a control plane and a small shop — frontend → orders → payments and
inventory (v1 and v2, split by an HTTPRoute) — each app behind its own proxy,
drive steady traffic and show a live table per service.

Ctrl-C stops everything and prints the table of the whole run. When
standard output is not a terminal (make demo | tee log), the table is printed
as plain lines every refresh instead of redrawn. With --duration it runs
headless, prints the final table and exits non-zero if less than 99% of
requests succeeded.`,
		Example: `  trellis demo
  trellis demo --duration 30s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger("demo")
			if err != nil {
				return err
			}
			o.Logger = log
			o.Out = g.stdout
			// The demo gets a fresh temporary data dir unless --data-dir is given.
			if f := cmd.Flag("data-dir"); f != nil && f.Changed {
				o.DataDir = g.dataDir
			}
			interactive := o.Duration == 0
			o.Live = interactive && isTerminal(g.stdout)
			o.Plain = interactive && !o.Live
			o.Terminal = openTerminal
			// Under 'make demo | tee log', Ctrl-C stops tee too: a write to
			// the broken pipe must fail, not kill the demo (Go's default for
			// stdout) before it stops its processes and removes its data dir.
			// Notify, unlike Ignore, is not inherited by the processes the
			// demo starts.
			sigpipe := make(chan os.Signal, 1)
			signal.Notify(sigpipe, syscall.SIGPIPE)
			defer signal.Stop(sigpipe)
			res, err := demo.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			if rate := res.SuccessRate(); rate < 0.99 {
				fmt.Fprintf(g.stderr, "demo: success rate %.2f%% is below 99%%\n", rate*100)
				return exitError{code: 2}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&o.Duration, "duration", 0, "run for this long, headless, then exit (0: until Ctrl-C)")
	cmd.Flags().IntVar(&o.RPS, "rps", 50, "requests per second sent to the frontend")
	return cmd
}

func newDemoAppCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:                "demo-app NAME [flags]",
		Short:              "Run one app of the demo shop (used by 'trellis demo')",
		Hidden:             true,
		DisableFlagParsing: true,
		Args:               cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return demo.RunApp(cmd.Context(), args[0], args[1:])
		},
	}
}

// openTerminal opens the controlling terminal, where the demo's final
// table goes when standard output is a pipe that broke.
func openTerminal() (io.WriteCloser, error) {
	return os.OpenFile("/dev/tty", os.O_WRONLY, 0)
}

func isTerminal(w any) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
