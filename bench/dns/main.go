// Command dns measures the Trellis DNS server's queries per second beside
// dnsmasq answering the same names from a static zone (a hosts file), with
// the same load tool and settings, one run each, and prints the ratio.
//
//	go run ./bench/dns                      # dnsperf if installed, else the built-in loader
//	go run ./bench/dns -tool go -duration 5s -clients 16
//
// Both servers run as their own processes on loopback: Trellis's is this
// command re-executed with -serve (a bolt store with the endpoints, the mesh
// view and the DNS server, as `trellis control` wires them); dnsmasq gets a
// hosts file with the same names and addresses. Before the load the command
// checks that both give the same answer for every name.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	meshdns "trellis.dev/trellis/internal/dns"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/view"
)

type config struct {
	serve     bool
	services  int
	endpoints int
	duration  time.Duration
	clients   int
	tool      string
	profile   string
	rounds    int
}

func main() {
	var c config
	flag.BoolVar(&c.serve, "serve", false, "internal: run the Trellis DNS server and print its address")
	flag.IntVar(&c.services, "services", 50, "mesh services (names queried)")
	flag.IntVar(&c.endpoints, "endpoints", 3, "healthy endpoints per service (A records per answer)")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "load time per server, split into -rounds")
	flag.IntVar(&c.rounds, "rounds", 5, "alternations between the servers within the one run")
	flag.IntVar(&c.clients, "clients", 8, "concurrent clients (dnsperf -c; goroutines for -tool go)")
	flag.StringVar(&c.tool, "tool", "auto", "load tool: dnsperf, go, or auto (dnsperf if installed)")
	flag.StringVar(&c.profile, "cpuprofile", "", "write the Trellis server's CPU profile to this file")
	flag.Parse()
	var err error
	switch {
	case c.services < 1 || c.services > maxServices:
		err = fmt.Errorf("-services %d: want 1 to %d", c.services, maxServices)
	case c.endpoints < 1 || c.endpoints > maxEndpoints:
		err = fmt.Errorf("-endpoints %d: want 1 to %d", c.endpoints, maxEndpoints)
	case c.rounds < 1 || c.duration/time.Duration(max(c.rounds, 1)) < time.Second:
		err = fmt.Errorf("-rounds %d: want at least 1, and -duration/-rounds at least 1s", c.rounds)
	case c.clients < 1:
		err = fmt.Errorf("-clients %d: want at least 1", c.clients)
	case c.serve:
		err = serve(c)
	default:
		err = run(c)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/dns:", err)
		os.Exit(1)
	}
}

func serviceName(i int) string { return fmt.Sprintf("svc%03d.default.svc.trellis.local.", i) }

// Limits that keep every endpoint address distinct.
const (
	maxEndpoints = 16
	maxServices  = 4000
)

// endpointIP is endpoint j of service i: addresses in 127.3.0.0/16, only
// ever carried in answers, never dialled.
func endpointIP(i, j int) string {
	n := i*maxEndpoints + j
	return fmt.Sprintf("127.3.%d.%d", n/250, n%250+1)
}

// serve is the Trellis side: endpoints in a bolt store, the view, the DNS
// server; it prints the address and serves until stdin closes or a signal.
func serve(c config) error {
	dir, err := os.MkdirTemp("", "trellis-bench-dns")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := store.NewBolt(filepath.Join(dir, "store.db"), store.BoltOptions{})
	if err != nil {
		return err
	}
	defer st.Close()
	var ops []store.Op
	for i := range c.services {
		name := strings.SplitN(serviceName(i), ".", 2)[0]
		for j := range c.endpoints {
			id := fmt.Sprintf("%s-%d", name, j)
			b, err := proto.Marshal(&meshv1.Endpoint{Id: id, Service: name, Namespace: "default",
				Address: endpointIP(i, j) + ":15006", Healthy: true, Labels: map[string]string{"app": name}})
			if err != nil {
				return err
			}
			ops = append(ops, store.Put(registry.Key("default", name, id), b, store.Any))
		}
	}
	rev, err := st.Txn(context.Background(), ops...)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	v := view.New(st, view.Options{})
	go v.Run(ctx)
	s, err := meshdns.Start(v, meshdns.Options{Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer s.Stop()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := s.WaitFor(wctx, rev); err != nil {
		return err
	}
	if c.profile != "" {
		f, err := os.Create(c.profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Println(s.Addr())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	<-ctx.Done()
	return nil
}

func run(c config) error {
	tool, err := pickTool(c.tool)
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		return errors.New("dnsmasq not installed (apt-get install dnsmasq)")
	}
	dir, err := os.MkdirTemp("", "trellis-bench-dns")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	trellisAddr, stopTrellis, err := startTrellis(c)
	if err != nil {
		return err
	}
	defer stopTrellis()
	dnsmasqAddr, stopDnsmasq, err := startDnsmasq(c, dir)
	if err != nil {
		return err
	}
	defer stopDnsmasq()
	if err := sameAnswers(c, trellisAddr, dnsmasqAddr); err != nil {
		return err
	}
	queries := filepath.Join(dir, "queries.txt")
	if err := writeQueries(c, queries); err != nil {
		return err
	}

	fmt.Printf("%d names × %d A records, %s per server in %d rounds, %d clients, load tool %s\n",
		c.services, c.endpoints, c.duration, c.rounds, c.clients, tool)
	// The load alternates between the servers in rounds, so a change in
	// what else the machine runs weighs on both alike.
	slice := c
	slice.duration = c.duration / time.Duration(c.rounds)
	totals := map[string]*result{"dnsmasq": {}, "trellis": {}}
	for range c.rounds {
		for _, srv := range []struct{ name, addr string }{{"dnsmasq", dnsmasqAddr}, {"trellis", trellisAddr}} {
			r, err := load(tool, slice, srv.addr, queries)
			if err != nil {
				return fmt.Errorf("%s: %w", srv.name, err)
			}
			t := totals[srv.name]
			t.answered += r.answered
			t.lost += r.lost
			t.qps += r.qps / float64(c.rounds)
		}
	}
	for _, name := range []string{"dnsmasq", "trellis"} {
		r := totals[name]
		fmt.Printf("%-8s %10.0f queries/s  (%d answered, %d lost)\n", name, r.qps, r.answered, r.lost)
	}
	fmt.Printf("ratio trellis/dnsmasq: %.2f\n", totals["trellis"].qps/totals["dnsmasq"].qps)
	return nil
}

func pickTool(t string) (string, error) {
	_, lookErr := exec.LookPath("dnsperf")
	switch t {
	case "auto":
		if lookErr == nil {
			return "dnsperf", nil
		}
		return "go", nil
	case "dnsperf":
		if lookErr != nil {
			return "", errors.New("dnsperf not installed (apt-get install dnsperf), or use -tool go")
		}
		return t, nil
	case "go":
		return t, nil
	}
	return "", fmt.Errorf("-tool %q: want dnsperf, go or auto", t)
}

// startTrellis re-executes this command with -serve and reads its address.
func startTrellis(c config) (string, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(self, "-serve", "-services", strconv.Itoa(c.services), "-endpoints", strconv.Itoa(c.endpoints),
		"-cpuprofile", c.profile)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { stdin.Close(); cmd.Wait() }
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		stop()
		return "", nil, fmt.Errorf("trellis server: %w", err)
	}
	return strings.TrimSpace(line), stop, nil
}

// startDnsmasq serves the same names from a hosts file, authoritative data
// only (no upstream, no /etc/hosts), with the same TTL.
func startDnsmasq(c config, dir string) (string, func(), error) {
	var hosts strings.Builder
	for i := range c.services {
		for j := range c.endpoints {
			fmt.Fprintf(&hosts, "%s %s\n", endpointIP(i, j), strings.TrimSuffix(serviceName(i), "."))
		}
	}
	hostsFile := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hostsFile, []byte(hosts.String()), 0o644); err != nil {
		return "", nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return "", nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port="+port,
		"--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
		"--addn-hosts="+hostsFile, "--local-ttl=5", "--pid-file=", "--user=root")
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }
	for range 50 {
		if _, err := ask(addr, serviceName(0)); err == nil {
			return addr, stop, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	return "", nil, errors.New("dnsmasq did not answer")
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// ask returns name's A addresses from addr, sorted.
func ask(addr, name string) ([]string, error) {
	m := new(mdns.Msg).SetQuestion(name, mdns.TypeA)
	c := &mdns.Client{Timeout: time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		return nil, err
	}
	if resp.Rcode != mdns.RcodeSuccess {
		return nil, fmt.Errorf("%s: %s", name, mdns.RcodeToString[resp.Rcode])
	}
	var ips []string
	for _, rr := range resp.Answer {
		if a, ok := rr.(*mdns.A); ok {
			ips = append(ips, a.A.String())
		}
	}
	slices.Sort(ips)
	return ips, nil
}

// sameAnswers checks both servers answer every name alike: the benchmark
// compares like with like.
func sameAnswers(c config, trellis, dnsmasq string) error {
	for i := range c.services {
		a, err := ask(trellis, serviceName(i))
		if err != nil {
			return fmt.Errorf("trellis: %w", err)
		}
		b, err := ask(dnsmasq, serviceName(i))
		if err != nil {
			return fmt.Errorf("dnsmasq: %w", err)
		}
		if !slices.Equal(a, b) || len(a) != c.endpoints {
			return fmt.Errorf("%s: trellis %v, dnsmasq %v", serviceName(i), a, b)
		}
	}
	return nil
}

func writeQueries(c config, path string) error {
	var b strings.Builder
	for i := range c.services {
		fmt.Fprintf(&b, "%s A\n", serviceName(i))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

type result struct {
	qps            float64
	answered, lost int64
}

func load(tool string, c config, addr, queries string) (result, error) {
	if tool == "dnsperf" {
		return dnsperf(c, addr, queries)
	}
	return goLoad(c, addr)
}

var (
	qpsRe  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	doneRe = regexp.MustCompile(`Queries completed:\s+(\d+)`)
	lostRe = regexp.MustCompile(`Queries lost:\s+(\d+)`)
)

func dnsperf(c config, addr, queries string) (result, error) {
	host, port, _ := net.SplitHostPort(addr)
	secs := strconv.Itoa(max(1, int(c.duration/time.Second)))
	out, err := exec.Command("dnsperf", "-s", host, "-p", port, "-d", queries, "-l", secs,
		"-c", strconv.Itoa(c.clients), "-T", "1", "-q", "100", "-t", "2").CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("dnsperf: %w\n%s", err, out)
	}
	m, d, l := qpsRe.FindSubmatch(out), doneRe.FindSubmatch(out), lostRe.FindSubmatch(out)
	if m == nil || d == nil || l == nil {
		return result{}, fmt.Errorf("dnsperf output not understood:\n%s", out)
	}
	var r result
	r.qps, _ = strconv.ParseFloat(string(m[1]), 64)
	r.answered, _ = strconv.ParseInt(string(d[1]), 10, 64)
	r.lost, _ = strconv.ParseInt(string(l[1]), 10, 64)
	return r, nil
}

// goLoad is the built-in loader: each client a UDP socket with one query
// outstanding, names in turn, for the duration.
func goLoad(c config, addr string) (result, error) {
	var answered, lost atomic.Int64
	deadline := time.Now().Add(c.duration)
	var wg sync.WaitGroup
	errc := make(chan error, c.clients)
	for w := range c.clients {
		wg.Go(func() {
			conn, err := mdns.Dial("udp", addr)
			if err != nil {
				errc <- err
				return
			}
			defer conn.Close()
			for i := w; time.Now().Before(deadline); i++ {
				m := new(mdns.Msg).SetQuestion(serviceName(i%c.services), mdns.TypeA)
				conn.SetDeadline(time.Now().Add(time.Second))
				if err := conn.WriteMsg(m); err != nil {
					lost.Add(1)
					continue
				}
				if resp, err := conn.ReadMsg(); err != nil || resp.Id != m.Id {
					lost.Add(1)
					continue
				}
				answered.Add(1)
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return result{}, err
	}
	return result{qps: float64(answered.Load()) / c.duration.Seconds(), answered: answered.Load(), lost: lost.Load()}, nil
}
