package control

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startControl runs a control plane on loopback ports chosen by the kernel.
func startControl(t testing.TB, dir string) *Control {
	t.Helper()
	c, err := Start(context.Background(), Options{
		DataDir:     dir,
		GRPCAddr:    "127.0.0.1:0",
		AdminAddr:   "127.0.0.1:0",
		MetricsAddr: "127.0.0.1:0",
		DNSAddr:     DNSOff, // tests that want DNS start their own
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// client talks to the admin API as the CLI does: trusting ca.crt, sending
// the token from admin-token.
type client struct {
	t     testing.TB
	base  string
	token string
	http  *http.Client
}

func newClient(t testing.TB, c *Control) *client {
	t.Helper()
	dir := c.o.DataDir
	pem, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("ca.crt holds no certificate")
	}
	tok, err := os.ReadFile(filepath.Join(dir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	_, admin := c.Addrs()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}}
	t.Cleanup(tr.CloseIdleConnections)
	return &client{
		t:     t,
		base:  "https://" + admin,
		token: strings.TrimSpace(string(tok)),
		http:  &http.Client{Transport: tr, Timeout: 10 * time.Second},
	}
}

// do sends a request with the admin token and returns status and body.
func (c *client) do(method, path string, body []byte) (int, []byte) {
	c.t.Helper()
	return c.doToken(method, path, body, c.token)
}

func (c *client) doToken(method, path string, body []byte, token string) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		c.t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	return resp.StatusCode, b
}

type file struct {
	Name    string `json:"name"`
	Content string `json:"content"`
}

func applyBody(dryRun bool, files ...file) []byte {
	b, _ := json.Marshal(map[string]any{"files": files, "dryRun": dryRun})
	return b
}

type applyAnswer struct {
	Revision int64 `json:"revision"`
	Results  []struct {
		Ref    string `json:"ref"`
		Action string `json:"action"`
	} `json:"results"`
	Errors []string `json:"errors"`
	Error  string   `json:"error"`
}

func (c *client) apply(dryRun bool, files ...file) (int, applyAnswer) {
	c.t.Helper()
	status, body := c.do("POST", "/v1/apply", applyBody(dryRun, files...))
	var a applyAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		c.t.Fatalf("apply answer %q: %v", body, err)
	}
	return status, a
}

func (a applyAnswer) actions() string {
	var out []string
	for _, r := range a.Results {
		out = append(out, r.Ref+"="+r.Action)
	}
	return strings.Join(out, ",")
}

func revision(t testing.TB, c *Control) int64 {
	t.Helper()
	rev, err := c.st.Revision(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

const serviceYAML = `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: inventory
spec:
  ports:
  - name: http
    port: 80
`

func routeYAML(name string, weightV1 int) string {
	return `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: ` + name + `
spec:
  parentRefs:
  - kind: Service
    group: ""
    name: inventory
    port: 80
  rules:
  - matches:
    - path: {value: /` + name + `} # a path of its own: routes of different names never conflict
    backendRefs:
    - name: inventory-v1
      port: 80
      weight: ` + itoa(weightV1) + `
    - name: inventory-v2
      port: 80
      weight: ` + itoa(100-weightV1) + `
`
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}
