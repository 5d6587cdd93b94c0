package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/push"
)

// runResult is one run's figures.
type runResult struct {
	Proxies  int `json:"proxies"`
	Services int `json:"services"`
	// StartupSeconds: from starting the sessions to every proxy having
	// applied its first snapshot (certificates were issued before).
	StartupSeconds float64 `json:"startupSeconds"`
	CertifySeconds float64 `json:"certifySeconds"`
	// Store writes (transactions and lease grants) while the proxies
	// registered, and per second at rest (heartbeats only), with the
	// keep-alives per second at rest.
	StartupStoreWrites      float64 `json:"startupStoreWrites"`
	SteadyStoreWritesPerSec float64 `json:"steadyStoreWritesPerSec"`
	SteadyKeepAlivesPerSec  float64 `json:"steadyKeepAlivesPerSec"`
	// From an apply returning to the last affected proxy applying it.
	ApplyP50Ms       float64 `json:"applyP50Ms"`
	ApplyP99Ms       float64 `json:"applyP99Ms"`
	ApplyMaxMs       float64 `json:"applyMaxMs"`
	AffectedPerApply float64 `json:"affectedPerApply"`
	BytesPerApply    float64 `json:"bytesPerApply"`
	PushesPerApply   float64 `json:"pushesPerApply"`
	// From a Register returning to the last proxy using the service
	// holding the new endpoint.
	EndpointP50Ms           float64 `json:"endpointP50Ms"`
	EndpointP99Ms           float64 `json:"endpointP99Ms"`
	AffectedPerEndpoint     float64 `json:"affectedPerEndpointChange"`
	BytesPerEndpointChange  float64 `json:"bytesPerEndpointChange"`
	PushesPerEndpointChange float64 `json:"pushesPerEndpointChange"`
	IncrementalShare        float64 `json:"incrementalShare"` // of the pushes during changes
	// Snapshot a proxy holds: mean encoded bytes and services.
	SnapshotBytesMean   int     `json:"snapshotBytesMean"`
	ServicesPerSnapshot float64 `json:"servicesPerSnapshot"`
	// Control plane: CPU seconds while starting the proxies and during
	// the changes; RSS at the end and its peak.
	CPUSecondsStartup float64 `json:"cpuSecondsStartup"`
	CPUSecondsChanges float64 `json:"cpuSecondsChanges"`
	RSSMB             float64 `json:"rssMB"`
	PeakRSSMB         float64 `json:"peakRSSMB"`
}

const changeTimeout = 20 * time.Second

func runOnce(ctx context.Context, o options, n, services int) (res runResult, err error) {
	res = runResult{Proxies: n, Services: services}
	dir, err := os.MkdirTemp("", "trellis-scale-")
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil && os.Getenv("SCALE_KEEP") != "" {
			fmt.Fprintf(os.Stderr, "kept %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	cp, err := startControl(ctx, o.bin, dir, o.controlArg...)
	if err != nil {
		return res, err
	}
	defer cp.stop()
	if _, err := cp.apply(ctx, "services.yaml", servicesYAML(services)); err != nil {
		return res, err
	}

	proxies := newSimProxies(n, services, o.subs)
	t0 := time.Now()
	if err := certifyAll(ctx, cp, o.trustDom, proxies); err != nil {
		return res, err
	}
	res.CertifySeconds = time.Since(t0).Seconds()

	runCtx, stopProxies := context.WithCancel(ctx)
	defer stopProxies()
	errc := make(chan error, n)
	before, err := cp.metrics(ctx)
	if err != nil {
		return res, err
	}
	u0, err := readUsage(cp.pid())
	if err != nil {
		return res, err
	}
	t0 = time.Now()
	for _, p := range proxies {
		if err := p.start(runCtx, cp, o.full, o.heartbeat, errc); err != nil {
			return res, err
		}
		defer p.client.Close()
	}
	if err := waitReady(ctx, proxies, errc); err != nil {
		return res, err
	}
	res.StartupSeconds = time.Since(t0).Seconds()
	after, err := cp.metrics(ctx)
	if err != nil {
		return res, err
	}
	res.StartupStoreWrites = storeWrites(after) - storeWrites(before)

	if o.steady > 0 {
		time.Sleep(o.steady)
		rest, err := cp.metrics(ctx)
		if err != nil {
			return res, err
		}
		res.SteadyStoreWritesPerSec = (storeWrites(rest) - storeWrites(after)) / o.steady.Seconds()
		res.SteadyKeepAlivesPerSec = (rest[opKey("keepalive")] - after[opKey("keepalive")]) / o.steady.Seconds()
	}

	u1, err := readUsage(cp.pid())
	if err != nil {
		return res, err
	}
	res.CPUSecondsStartup = (u1.CPU - u0.CPU).Seconds()
	if err := timeApplies(ctx, cp, o, proxies, &res); err != nil {
		return res, err
	}
	if err := timeEndpointChanges(ctx, cp, o, proxies, &res); err != nil {
		return res, err
	}
	u2, err := readUsage(cp.pid())
	if err != nil {
		return res, err
	}
	res.CPUSecondsChanges = (u2.CPU - u1.CPU).Seconds()
	res.RSSMB, res.PeakRSSMB = float64(u2.RSS)/(1<<20), float64(u2.PeakRSS)/(1<<20)

	var bytes, svcs int
	for _, p := range proxies {
		s := p.last()
		bytes += snapshotSize(s)
		svcs += len(s.GetServices())
	}
	res.SnapshotBytesMean, res.ServicesPerSnapshot = bytes/n, float64(svcs)/float64(n)
	select {
	case err := <-errc:
		return res, err
	default:
	}
	return res, nil
}

func opKey(op string) string { return "trellis_control_store_operation_duration_seconds/" + op }

// storeWrites counts the store operations that write (bbolt: one
// transaction, one fsync each).
func storeWrites(m map[string]float64) float64 {
	return m[opKey("txn")] + m[opKey("grant")] + m[opKey("revoke")]
}

func servicesYAML(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata:\n  name: %s\nspec:\n  ports:\n  - {name: http, port: 80}\n---\n", serviceName(i))
	}
	return b.String()
}

func routeYAML(k, a int) string {
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: scale-%[1]s
spec:
  parentRefs:
  - {group: "", kind: Service, name: %[1]s}
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - {name: x-scale-apply, value: "%[2]d"}
    backendRefs:
    - {name: %[1]s, port: 80}
`, serviceName(k), a)
}

// certifyAll issues every proxy's certificate, a few at a time, over one
// bootstrap connection.
func certifyAll(ctx context.Context, cp *controlPlane, trustDomain string, proxies []*simProxy) error {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return err
	}
	boot, err := push.Dial(push.ClientOptions{Addr: cp.addrs.GRPC, RootCAs: cp.ca, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer boot.Close()
	c := &certifier{client: boot, token: cp.token, td: td}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, 16)
	)
	for _, p := range proxies {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cert, err := c.certify(ctx, serviceName(p.service))
			mu.Lock()
			defer mu.Unlock()
			if err != nil && first == nil {
				first = err
			}
			p.cert = cert
		}()
	}
	wg.Wait()
	return first
}

func waitReady(ctx context.Context, proxies []*simProxy, errc <-chan error) error {
	deadline := time.After(3 * time.Minute)
	for _, p := range proxies {
		select {
		case <-p.ready:
		case err := <-errc:
			return err
		case <-deadline:
			return fmt.Errorf("scale: %d of %d proxies got no snapshot in 3 minutes (%s first)", countPending(proxies), len(proxies), p.id)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func countPending(proxies []*simProxy) int {
	n := 0
	for _, p := range proxies {
		select {
		case <-p.ready:
		default:
			n++
		}
	}
	return n
}

// waitAll waits until every proxy in ps applied a snapshot for which ok
// holds and returns the latest time one did.
func waitAll(ctx context.Context, ps []*simProxy, ok func(*meshv1.Snapshot) bool) (time.Time, error) {
	deadline := time.Now().Add(changeTimeout)
	var last time.Time
	for _, p := range ps {
		for {
			at, done := p.firstMatch(ok)
			if done {
				if at.After(last) {
					last = at
				}
				break
			}
			if time.Now().After(deadline) {
				return last, fmt.Errorf("scale: %s did not get the change within %s", p.id, changeTimeout)
			}
			if ctx.Err() != nil {
				return last, ctx.Err()
			}
			time.Sleep(500 * time.Microsecond)
		}
	}
	return last, nil
}

func users(proxies []*simProxy, k int) []*simProxy {
	var out []*simProxy
	for _, p := range proxies {
		if p.uses(k) {
			out = append(out, p)
		}
	}
	return out
}

// changeStats accumulates the timings and push counts of a series of changes.
type changeStats struct {
	lat                        []time.Duration
	affected                   int
	bytes, pushes, incremental float64
}

func (c *changeStats) add(lat time.Duration, affected int, before, after map[string]float64) {
	c.lat = append(c.lat, max(lat, 0))
	c.affected += affected
	c.bytes += after["trellis_control_push_bytes_total"] - before["trellis_control_push_bytes_total"]
	c.pushes += after["trellis_control_push_snapshots_total"] - before["trellis_control_push_snapshots_total"]
	c.incremental += after["trellis_control_push_incremental_snapshots_total"] - before["trellis_control_push_incremental_snapshots_total"]
}

func (c *changeStats) percentile(p float64) float64 {
	if len(c.lat) == 0 {
		return 0
	}
	s := slices.Clone(c.lat)
	slices.Sort(s)
	i := min(len(s)-1, int(p*float64(len(s))))
	return float64(s[i].Microseconds()) / 1000
}

// timeApplies applies -applies HTTPRoute changes, each to a service some
// proxy subscribes to, and times each to its last affected proxy.
func timeApplies(ctx context.Context, cp *controlPlane, o options, proxies []*simProxy, res *runResult) error {
	var st changeStats
	for a := range o.applies {
		k := proxies[(a*7919)%len(proxies)].subs[0]
		affected := users(proxies, k)
		before, err := cp.metrics(ctx)
		if err != nil {
			return err
		}
		rev, err := cp.apply(ctx, "route.yaml", routeYAML(k, a))
		if err != nil {
			return err
		}
		applied := time.Now()
		last, err := waitAll(ctx, affected, func(s *meshv1.Snapshot) bool { return s.GetRevision() >= rev })
		if err != nil {
			return fmt.Errorf("apply %d (%s, revision %d): %w", a, serviceName(k), rev, err)
		}
		after, err := cp.metrics(ctx)
		if err != nil {
			return err
		}
		st.add(last.Sub(applied), len(affected), before, after)
	}
	res.ApplyP50Ms, res.ApplyP99Ms, res.ApplyMaxMs = st.percentile(0.5), st.percentile(0.99), st.percentile(1)
	n := float64(o.applies)
	res.AffectedPerApply, res.BytesPerApply, res.PushesPerApply = float64(st.affected)/n, st.bytes/n, st.pushes/n
	res.IncrementalShare = st.incremental / max(st.pushes, 1)
	return nil
}

// timeEndpointChanges registers -churn extra endpoints, each of a service
// a simulated proxy runs, and times each to the last proxy using it.
func timeEndpointChanges(ctx context.Context, cp *controlPlane, o options, proxies []*simProxy, res *runResult) error {
	if o.churn == 0 {
		return nil
	}
	var st changeStats
	for c := range o.churn {
		owner := proxies[(c*104729)%len(proxies)]
		k := owner.service
		affected := users(proxies, k)
		mesh, closeConn, err := rawMesh(cp, owner.cert)
		if err != nil {
			return err
		}
		id := fmt.Sprintf("extra-%04d", c)
		before, err := cp.metrics(ctx)
		if err != nil {
			closeConn()
			return err
		}
		_, err = mesh.Register(ctx, &meshv1.RegisterRequest{TtlSeconds: 30, Endpoint: &meshv1.Endpoint{
			Id: id, Service: serviceName(k), Namespace: namespace, Healthy: true,
			Address: fmt.Sprintf("10.2.%d.%d:8080", c/250, c%250+1), AdminAddress: "127.0.0.1:15000",
		}})
		closeConn()
		if err != nil {
			return fmt.Errorf("scale: register %s: %w", id, err)
		}
		registered := time.Now()
		last, err := waitAll(ctx, affected, func(s *meshv1.Snapshot) bool { return hasEndpoint(s, serviceName(k), id) })
		if err != nil {
			return fmt.Errorf("endpoint %s of %s: %w", id, serviceName(k), err)
		}
		after, err := cp.metrics(ctx)
		if err != nil {
			return err
		}
		st.add(last.Sub(registered), len(affected), before, after)
	}
	res.EndpointP50Ms, res.EndpointP99Ms = st.percentile(0.5), st.percentile(0.99)
	n := float64(o.churn)
	res.AffectedPerEndpoint, res.BytesPerEndpointChange, res.PushesPerEndpointChange = float64(st.affected)/n, st.bytes/n, st.pushes/n
	return nil
}

func hasEndpoint(s *meshv1.Snapshot, service, id string) bool {
	for _, svc := range s.GetServices() {
		if svc.GetName() != service {
			continue
		}
		for _, ep := range svc.GetEndpoints() {
			if ep.GetId() == id {
				return true
			}
		}
	}
	return false
}
