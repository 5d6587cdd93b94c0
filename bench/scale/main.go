// Command scale is the control plane's scale harness (`make bench-scale`):
// one real `trellis control` process (bbolt in a temp data dir) and N
// simulated proxies in this process, each with its own key, certificate
// (Certify with the dev-mode bootstrap token) and mTLS gRPC connection,
// registering under a lease, heart-beating and watching with ACKs — the
// real proxy-side session code, deltas included. Each proxy runs one of
// -services services and subscribes to -subs others.
//
// For each N it measures the time from an apply returning to the last
// affected proxy applying (and ACKing) it, over -applies HTTPRoute changes,
// and the same for endpoint changes (-churn extra endpoints registered);
// the bytes and snapshots pushed per change (the control plane's push
// counters); the control plane's CPU seconds and RSS (from /proc); store
// writes while registering and at rest; and the snapshot size per proxy.
// A last run with a mesh of 10 services shows a proxy's snapshot does not
// grow with the mesh. It prints a table and writes -out (JSON).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type options struct {
	bin        string
	ns         []int
	services   int
	subs       int
	applies    int
	churn      int
	full       bool
	heartbeat  time.Duration
	steady     time.Duration
	smallMesh  int
	out        string
	trustDom   string
	controlArg []string
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench-scale:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	ns := fs.String("n", "100,300,1000", "proxy counts to run, comma-separated")
	fs.StringVar(&o.bin, "trellis", "bin/trellis", "the trellis binary to run as the control plane")
	fs.IntVar(&o.services, "services", 500, "services in the mesh")
	fs.IntVar(&o.subs, "subs", 3, "services each proxy subscribes to")
	fs.IntVar(&o.applies, "applies", 50, "HTTPRoute applies timed per run")
	fs.IntVar(&o.churn, "churn", 20, "endpoint registrations timed per run")
	fs.BoolVar(&o.full, "full", false, "proxies do not ask for incremental snapshots (the before figures)")
	fs.DurationVar(&o.heartbeat, "heartbeat", 5*time.Second, "proxies' heartbeat interval")
	fs.DurationVar(&o.steady, "steady", 5*time.Second, "how long to watch the mesh at rest (store writes, keep-alives)")
	fs.IntVar(&o.smallMesh, "small-mesh", 10, "services in the comparison mesh (0: skip it)")
	fs.StringVar(&o.out, "out", "bench/results/scale.json", "where to write the results (empty: nowhere)")
	fs.StringVar(&o.trustDom, "trust-domain", "trellis.local", "the control plane's trust domain")
	ctl := fs.String("control-args", "", "extra flags for trellis control, space-separated")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-n: %q is not a positive count", s)
		}
		o.ns = append(o.ns, n)
	}
	if o.services < 2 || o.subs < 1 || o.applies < 1 {
		return o, fmt.Errorf("-services (>= 2), -subs and -applies (>= 1) must be positive")
	}
	o.controlArg = strings.Fields(*ctl)
	return o, nil
}

// report is what scale.json holds.
type report struct {
	Date        string      `json:"date"`
	Incremental bool        `json:"incremental"`
	Services    int         `json:"services"`
	Subs        int         `json:"subscriptionsPerProxy"`
	Runs        []runResult `json:"runs"`
	// MeshSize compares one proxy's snapshot in the big mesh and a small one.
	MeshSize *meshSize `json:"meshSize,omitempty"`
}

type meshSize struct {
	BigServices, SmallServices int
	// Mean snapshot bytes and services per snapshot, over the proxies.
	BigBytes, SmallBytes      int
	BigSvcsPerSnap, SmallSvcs float64
	BigProxies, SmallProxies  int
}

func run(args []string, stdout io.Writer) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	if _, err := os.Stat(o.bin); err != nil {
		return fmt.Errorf("-trellis %s: %w (build it with make build)", o.bin, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rep := report{Date: time.Now().UTC().Format(time.RFC3339), Incremental: !o.full, Services: o.services, Subs: o.subs}
	for _, n := range o.ns {
		fmt.Fprintf(stdout, "running %d proxies over %d services ...\n", n, o.services)
		r, err := runOnce(ctx, o, n, o.services)
		if err != nil {
			return err
		}
		rep.Runs = append(rep.Runs, r)
	}
	if o.smallMesh > 0 && len(rep.Runs) > 0 {
		big := rep.Runs[len(rep.Runs)-1]
		// As many endpoints per service as in the big run, so that only
		// the mesh's size differs.
		n := max(o.smallMesh, o.smallMesh*big.Proxies/o.services)
		fmt.Fprintf(stdout, "running %d proxies over %d services (snapshot size) ...\n", n, o.smallMesh)
		small := o
		small.applies, small.churn, small.steady = 1, 0, 0
		r, err := runOnce(ctx, small, n, o.smallMesh)
		if err != nil {
			return err
		}
		rep.MeshSize = &meshSize{
			BigServices: o.services, SmallServices: o.smallMesh,
			BigBytes: big.SnapshotBytesMean, SmallBytes: r.SnapshotBytesMean,
			BigSvcsPerSnap: big.ServicesPerSnapshot, SmallSvcs: r.ServicesPerSnapshot,
			BigProxies: big.Proxies, SmallProxies: r.Proxies,
		}
	}
	printTable(stdout, rep)
	if o.out == "" {
		return nil
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(o.out, append(b, '\n'), 0o644)
}

func printTable(w io.Writer, rep report) {
	mode := "incremental"
	if !rep.Incremental {
		mode = "full snapshots"
	}
	fmt.Fprintf(w, "\n%d services, %d subscriptions per proxy, pushes: %s\n", rep.Services, rep.Subs, mode)
	fmt.Fprintf(w, "%7s %9s %9s %9s %9s %9s %9s %11s %11s %9s %9s %9s %9s %10s %8s\n",
		"proxies", "startup", "apply50", "apply99", "ep50", "ep99", "affected", "B/apply", "B/ep-chg", "snap B", "cpu s", "rss MB", "peak MB", "writes/s", "ka/s")
	for _, r := range rep.Runs {
		fmt.Fprintf(w, "%7d %8.1fs %7.1fms %7.1fms %7.1fms %7.1fms %9.1f %11.0f %11.0f %9d %9.2f %9.1f %9.1f %10.2f %8.1f\n",
			r.Proxies, r.StartupSeconds, r.ApplyP50Ms, r.ApplyP99Ms, r.EndpointP50Ms, r.EndpointP99Ms, r.AffectedPerApply,
			r.BytesPerApply, r.BytesPerEndpointChange, r.SnapshotBytesMean, r.CPUSecondsChanges, r.RSSMB, r.PeakRSSMB,
			r.SteadyStoreWritesPerSec, r.SteadyKeepAlivesPerSec)
	}
	if m := rep.MeshSize; m != nil {
		fmt.Fprintf(w, "snapshot per proxy: %d B (%.1f services) in a mesh of %d services, %d B (%.1f services) in a mesh of %d\n",
			m.BigBytes, m.BigSvcsPerSnap, m.BigServices, m.SmallBytes, m.SmallSvcs, m.SmallServices)
	}
}
