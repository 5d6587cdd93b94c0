// Package cli holds trellis's subcommands and their output formatting.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// exitError carries a specific exit code up to Main.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Main runs the CLI and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	return run(args, os.Stdin, stdout, stderr)
}

// run is Main with stdin passed in (apply -f - reads it), for tests.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot(stdin, stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintln(stderr, "Error:", err)
	return 1
}

// globals are flags every subcommand shares.
type globals struct {
	dataDir  string
	logLevel string
	stdin    io.Reader
	stdout   io.Writer
	stderr   io.Writer
}

func newRoot(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "trellis",
		Short: "Trellis is a light service mesh: control plane, sidecar proxy and CLI in one binary",
		Long: `Trellis gives every service discovery, traffic control, mutual TLS and
metrics without changing the service's code.

Start a control plane with 'trellis control', put 'trellis proxy' beside each
service, and operate the mesh with apply, get, delete and proxy-status.
'trellis check' says whether this machine and the mesh are healthy, and what
to do when not. 'trellis demo' runs a small shop in the mesh and shows its
traffic live. 'trellis completion bash|zsh|fish' prints shell completion.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// --version prints what 'trellis version' prints.
	root.SetVersionTemplate("trellis {{.Version}}\n")
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", defaultDataDir(),
		"control plane data directory (store, CA, tokens); the CLI finds the control plane through it ($TRELLIS_DATA_DIR)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(
		newControlCmd(g),
		newProxyCmd(g),
		newApplyCmd(g),
		newGetCmd(g),
		newDeleteCmd(g),
		newProxyStatusCmd(g),
		newTapCmd(g),
		newStatCmd(g),
		newTopCmd(g),
		newCheckCmd(g),
		newTokenCmd(g),
		newAuditCmd(g),
		newCACmd(g),
		newAuthCmd(g),
		newDemoCmd(g),
		newDemoAppCmd(g),
		newVersionCmd(g),
	)
	return root
}

func defaultDataDir() string {
	if d := os.Getenv("TRELLIS_DATA_DIR"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".trellis"
	}
	return filepath.Join(home, ".trellis")
}

// logger builds the process's logger; component "" leaves scoping to the
// package (control and proxy scope their own loggers).
func (g *globals) logger(component string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToLower(g.logLevel))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: lvl}))
	if component != "" {
		log = log.With("component", component)
	}
	return log, nil
}

// version is set at build time with -ldflags "-X trellis.dev/trellis/internal/cli.version=...".
var version = "dev"

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the trellis version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(g.stdout, "trellis", version)
		},
	}
}
