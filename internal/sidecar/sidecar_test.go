package sidecar

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

func TestUpstreamService(t *testing.T) {
	tests := []struct{ in, want, wantErr string }{
		{"orders", "orders.default", ""},
		{"orders.shop", "orders.shop", ""},
		{"orders:82", "orders.default", ""},
		{"orders.shop:82", "orders.shop", ""},
		// Subscribed as given before meshname, and so dropped by the
		// session as not name.namespace:
		{"orders.shop.svc", "orders.shop", ""},
		{"orders.shop.svc.trellis.local:8080", "orders.shop", ""},
		{"Orders", "orders.default", ""},
		{"orders.shop.svc.cluster.local", "", `its domain is not "trellis.local"`},
		{"orders_v2", "", `'_' is not allowed`},
		{"orders.shop.eu", "", `must be "svc"`},
	}
	for _, tt := range tests {
		got, err := upstreamService(tt.in, "default")
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("upstreamService(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("upstreamService(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// Names are checked before any file is read or the control plane dialled,
// each error naming the flag it came from.
func TestNewSidecarChecksNames(t *testing.T) {
	tests := []struct {
		o       Options
		wantErr string
	}{
		{Options{}, "--service is required"},
		{Options{Service: "Orders"}, `--service: "Orders" is not a valid name`},
		{Options{Service: "orders", Namespace: "shop_eu"}, `--namespace: "shop_eu" is not a valid name`},
		{Options{Service: "orders", ServiceAccount: "orders..sa"}, "--service-account:"},
		{Options{Service: "orders", Upstreams: map[string]string{"pay_ments": "127.0.0.1:0"}}, "--upstream pay_ments:"},
		{Options{Service: "orders", CAFile: "/nonexistent/ca.crt"}, "read CA file"}, // names fine: on to the files
	}
	for _, tt := range tests {
		_, err := newSidecar(tt.o)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "sidecar: ") {
			t.Errorf("newSidecar(%+v) = %v; want %q", tt.o, err, tt.wantErr)
		}
	}
}

// TestTakenPortFailsBeforeCertificate: a listen address in use fails the
// start at once, naming its flag, and no certificate is asked for.
func TestTakenPortFailsBeforeCertificate(t *testing.T) {
	cp := startControlPlane(t)
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.Addr().String()
	free := "127.0.0.1:0"
	for _, tt := range []struct {
		flag string
		o    Options
	}{
		{"--inbound", Options{InboundAddr: taken, OutboundAddr: free, AdminAddr: free}},
		{"--outbound", Options{InboundAddr: free, OutboundAddr: taken, AdminAddr: free}},
		{"--admin", Options{InboundAddr: free, OutboundAddr: free, AdminAddr: taken}},
		{"--upstream payments", Options{InboundAddr: free, OutboundAddr: free, AdminAddr: free, Upstreams: map[string]string{"payments": taken}}},
	} {
		o := tt.o
		o.Service, o.ControlAddr, o.CAFile, o.TokenFile = "orders", cp.addr, cp.caFile, cp.token
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		code, err := Run(ctx, o)
		cancel()
		want := "sidecar: " + tt.flag + " " + taken + ": "
		if code != 1 || err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "pass "+tt.flag+" another address") {
			t.Errorf("%s taken: code %d, err %v; want %q", tt.flag, code, err, want)
		}
	}
	if n := cp.signer.signed.Load(); n != 0 {
		t.Errorf("%d certificates issued; a taken port must fail before asking", n)
	}
}
