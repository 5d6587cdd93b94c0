package cli

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"trellis.dev/trellis/internal/control"
)

func TestControlStoreFlagErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--etcd-endpoints", "http://127.0.0.1:2379"}, "--etcd-endpoints needs --store etcd"},
		{[]string{"--etcd-ca", "ca.pem"}, "--etcd-ca needs --store etcd"},
		{[]string{"--store", "etcd"}, "--store etcd needs --etcd-endpoints"},
		{[]string{"--store", "consul"}, `--store "consul": want bolt or etcd`},
		{[]string{"--store", "etcd", "--etcd-endpoints", "https://127.0.0.1:1", "--etcd-cert", "c.pem"}, "both the certificate and its key"},
		{[]string{"--store", "etcd", "--etcd-endpoints", "127.0.0.1:2379"}, "want http://host:port"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		args := append([]string{"control", "--data-dir", dir, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}, tt.args...)
		code := Main(args, &out, &errb)
		if code == 0 || !strings.Contains(errb.String(), tt.wantErr) {
			t.Errorf("trellis control %v: exit %d, stderr %q; want non-zero and %q", tt.args, code, errb.String(), tt.wantErr)
		}
	}
}

func TestControlStoreFlagsApply(t *testing.T) {
	var sf storeFlags
	f := pflag.NewFlagSet("control", pflag.ContinueOnError)
	sf.register(f)
	err := f.Parse([]string{"--store", "etcd", "--etcd-endpoints", "https://a:2379,https://b:2379",
		"--etcd-ca", "ca.pem", "--etcd-cert", "c.pem", "--etcd-key", "k.pem", "--ca-seal-key", "seal.key"})
	if err != nil {
		t.Fatal(err)
	}
	var o control.Options
	if err := sf.apply(f, &o); err != nil {
		t.Fatal(err)
	}
	e := o.Etcd
	if !slices.Equal(e.Endpoints, []string{"https://a:2379", "https://b:2379"}) || e.Prefix != "/trellis" ||
		e.CAFile != "ca.pem" || e.CertFile != "c.pem" || e.KeyFile != "k.pem" {
		t.Fatalf("etcd options = %+v", e)
	}
	if o.CASealKeyFile != "seal.key" {
		t.Fatalf("CASealKeyFile = %q, want seal.key", o.CASealKeyFile)
	}
	// The default leaves etcd off: bbolt in the data dir.
	var plain storeFlags
	f = pflag.NewFlagSet("control", pflag.ContinueOnError)
	plain.register(f)
	o = control.Options{}
	if err := plain.apply(f, &o); err != nil || len(o.Etcd.Endpoints) != 0 {
		t.Fatalf("no flags: %+v, %v; want no etcd", o.Etcd, err)
	}
}
