package control

import (
	"net"
	"os"
	"strings"
	"testing"
)

func TestReplicaOptions(t *testing.T) {
	for _, tc := range []struct {
		id    string
		addrs []string
		err   string
	}{
		{id: "cp1"},
		{id: "cp-1.eu:15010", addrs: []string{"10.0.0.1:15010", "10.0.0.2:15010"}},
		{id: "cp 1", err: "no spaces"},
		{id: "cp\x001", err: "printable"},
		{id: strings.Repeat("x", 129), err: "at most 128"},
		{addrs: []string{"10.0.0.1"}, err: "replicaGrpcAddrs"},
		{addrs: []string{"a:1", "a:1"}, err: "listed twice"},
	} {
		o := Options{DataDir: "/tmp/x", ReplicaID: tc.id, ReplicaGRPCAddrs: tc.addrs}
		o.setDefaults()
		err := o.Validate()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("id %q addrs %v: err %v, want %q", tc.id, tc.addrs, err, tc.err)
		}
	}
	host, _ := os.Hostname()
	if got := replicaID("", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 15020}); got != net.JoinHostPort(host, "15020") {
		t.Errorf("default replica id %q, want hostname:grpc-port", got)
	}
	if got := replicaID("cp2", &net.TCPAddr{Port: 1}); got != "cp2" {
		t.Errorf("configured id %q, want cp2", got)
	}
}
