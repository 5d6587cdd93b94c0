package cli

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
	"path/filepath"
	"strings"
	"time"

	"trellis.dev/trellis/internal/control"
)

// AdminTokenFileEnv names a file holding the token the CLI presents to the
// admin API instead of <data-dir>/admin-token.
const AdminTokenFileEnv = "TRELLIS_ADMIN_TOKEN_FILE"

// adminClient talks to the control plane's admin API. It finds the address,
// the CA and the token in the control plane's data directory, so on the same
// machine the CLI needs no flags.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

// apiError is an error body from the admin API.
type apiError struct {
	Status int
	Errors []string
}

func (e *apiError) Error() string {
	if len(e.Errors) == 1 {
		return e.Errors[0]
	}
	return fmt.Sprintf("%d errors:\n  %s", len(e.Errors), strings.Join(e.Errors, "\n  "))
}

func newAdminClient(dataDir string) (*adminClient, error) {
	hint := fmt.Sprintf("is a control plane running with --data-dir %s? (start one with 'trellis control')", dataDir)
	addrs, err := control.ReadAddrs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("find control plane: %w; %s", err, hint)
	}
	tokenFile := filepath.Join(dataDir, control.AdminTokenFile)
	// Another admin or read-only token ('trellis token create --role ...'),
	// from a file so it stays out of the environment and shell history.
	if f := os.Getenv(AdminTokenFileEnv); f != "" {
		tokenFile = f
	}
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("read admin token: %w; %s", err, hint)
	}
	caFile := filepath.Join(dataDir, control.CAFile)
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w; %s", err, hint)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("read CA: %s holds no PEM certificate", caFile)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}}
	return &adminClient{
		base:  "https://" + addrs.Admin,
		token: strings.TrimSpace(string(token)),
		http:  &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}, nil
}

// withTimeout returns a copy of c whose requests may take d (a long-poll).
func (c *adminClient) withTimeout(d time.Duration) *adminClient {
	hc := *c.http
	hc.Timeout = d
	cp := *c
	cp.http = &hc
	return &cp
}

// do sends a request and decodes a JSON answer into out (if non-nil).
func (c *adminClient) do(ctx context.Context, method, path string, body, out any) error {
	_, err := c.roundTrip(ctx, method, path, body, out)
	return err
}

// roundTrip is do that also returns the answer's headers (check reads the
// server's Date to compare clocks).
func (c *adminClient) roundTrip(ctx context.Context, method, path string, body, out any) (http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("control plane at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("control plane: read answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		return resp.Header, decodeAPIError(resp.StatusCode, data)
	}
	if out == nil {
		return resp.Header, nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return resp.Header, fmt.Errorf("control plane: decode answer: %w", err)
	}
	return resp.Header, nil
}

func decodeAPIError(status int, data []byte) error {
	var body struct {
		Error  string   `json:"error"`
		Errors []string `json:"errors"`
	}
	e := &apiError{Status: status}
	if json.Unmarshal(data, &body) == nil {
		e.Errors = append(e.Errors, body.Errors...)
		if body.Error != "" {
			e.Errors = append(e.Errors, body.Error)
		}
	}
	if len(e.Errors) == 0 {
		msg := strings.TrimSpace(string(data))
		if msg == "" {
			msg = http.StatusText(status)
		}
		e.Errors = []string{fmt.Sprintf("control plane: %d: %s", status, msg)}
	}
	return e
}

// isNotFound reports whether err is the admin API's 404.
func isNotFound(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}
