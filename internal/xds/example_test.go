package xds_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	grpcxds "google.golang.org/grpc/xds"

	"trellis.dev/trellis/internal/control"
	"trellis.dev/trellis/internal/xds"
)

// TestExampleBootstrap: examples/xds/bootstrap.json is a bootstrap grpc-go
// accepts, for the control plane's default gRPC address, defining the
// certificate provider instance the Clusters name.
func TestExampleBootstrap(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "examples", "xds", "bootstrap.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := grpcxds.NewXDSResolverWithConfigForTesting(raw); err != nil {
		t.Fatalf("grpc-go refuses the example bootstrap: %v", err)
	}
	var bs struct {
		Servers []struct {
			URI   string `json:"server_uri"`
			Creds []struct {
				Type string `json:"type"`
			} `json:"channel_creds"`
		} `json:"xds_servers"`
		Providers map[string]struct {
			Plugin string `json:"plugin_name"`
		} `json:"certificate_providers"`
	}
	if err := json.Unmarshal(raw, &bs); err != nil {
		t.Fatal(err)
	}
	if len(bs.Servers) != 1 || bs.Servers[0].URI != control.DefaultGRPCAddr || bs.Servers[0].Creds[0].Type != "tls" {
		t.Errorf("xds_servers = %+v; want one, at %s, with tls channel creds", bs.Servers, control.DefaultGRPCAddr)
	}
	if p, ok := bs.Providers[xds.CertProviderInstance]; !ok || p.Plugin != "file_watcher" {
		t.Errorf("certificate_providers = %+v; want %q, a file_watcher", bs.Providers, xds.CertProviderInstance)
	}
}
