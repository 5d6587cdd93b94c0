package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"trellis.dev/trellis/internal/control"
)

// controlPlane is one `trellis control` process of the built binary, on
// bbolt in a temp data dir, in dev mode (--insecure-bootstrap-token) so the
// simulated proxies can certify any identity with one shared token.
type controlPlane struct {
	dir   string
	cmd   *exec.Cmd
	done  chan struct{}
	addrs control.Addrs
	token string // bootstrap token
	ca    *x509.CertPool
	admin *http.Client
	adm   string // admin API token
}

func startControl(ctx context.Context, bin, dir string, extra ...string) (*controlPlane, error) {
	logf, err := os.Create(filepath.Join(dir, "control.log"))
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	args := append([]string{"control", "--data-dir", data, "--insecure-bootstrap-token",
		"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own group, and killed with the harness if that dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("scale: start control: %w", err)
	}
	cp := &controlPlane{dir: data, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(cp.done)
	}()
	if err := cp.waitReady(ctx); err != nil {
		cp.stop()
		log, _ := os.ReadFile(filepath.Join(dir, "control.log"))
		return nil, fmt.Errorf("%w\ncontrol log:\n%s", err, log)
	}
	return cp, nil
}

func (cp *controlPlane) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-cp.done:
			return errors.New("scale: control plane exited at start")
		default:
		}
		if err := cp.load(); err == nil {
			return nil
		} else if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("scale: control plane not ready: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// load reads what the control plane wrote into its data dir.
func (cp *controlPlane) load() error {
	addrs, err := control.ReadAddrs(cp.dir)
	if err != nil {
		return err
	}
	tok, err := os.ReadFile(filepath.Join(cp.dir, control.BootstrapTokenFile))
	if err != nil {
		return err
	}
	adm, err := os.ReadFile(filepath.Join(cp.dir, control.AdminTokenFile))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(cp.dir, control.CAFile))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("ca.crt holds no certificate")
	}
	cp.addrs, cp.ca = addrs, pool
	cp.token, cp.adm = strings.TrimSpace(string(tok)), strings.TrimSpace(string(adm))
	cp.admin = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12},
	}}
	return nil
}

func (cp *controlPlane) pid() int { return cp.cmd.Process.Pid }

func (cp *controlPlane) stop() {
	_ = syscall.Kill(-cp.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-cp.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cp.cmd.Process.Pid, syscall.SIGKILL)
		<-cp.done
	}
}

// apply posts one file to the admin API, as `trellis apply -f` does, and
// returns the revision the write got.
func (cp *controlPlane) apply(ctx context.Context, name, content string) (int64, error) {
	body, err := json.Marshal(map[string]any{"files": []map[string]string{{"name": name, "content": content}}})
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", "https://"+cp.addrs.Admin+"/v1/apply", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+cp.adm)
	req.Header.Set("Content-Type", "application/json")
	resp, err := cp.admin.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scale: apply %s: %w", name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scale: apply %s: %s: %s", name, resp.Status, data)
	}
	var out struct {
		Revision int64 `json:"revision"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return 0, fmt.Errorf("scale: apply %s: answer: %w", name, err)
	}
	return out.Revision, nil
}

// metrics scrapes the control plane's /metrics into name → summed value
// (histograms: their sample count, by operation label for store ops).
func (cp *controlPlane) metrics(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+cp.addrs.Metrics+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scale: scrape: %w", err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scale: scrape: %w", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				out[name] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[name] += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				key := name
				for _, l := range m.GetLabel() {
					if l.GetName() == "operation" {
						key += "/" + l.GetValue()
					}
				}
				out[key] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out, nil
}
