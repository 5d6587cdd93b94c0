package control

import (
	"fmt"
	"net"
	"os"
	"strings"
	"unicode"

	"trellis.dev/trellis/internal/push"
)

// replicaID is the configured id, or hostname:grpc-port: unique among
// replicas on one machine (each has its own port) and across machines.
func replicaID(configured string, grpcAddr net.Addr) string {
	if configured != "" {
		return configured
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	_, port, err := net.SplitHostPort(grpcAddr.String())
	if err != nil {
		return host
	}
	return net.JoinHostPort(host, port)
}

// Replica is this replica's id (--replica-id, default hostname:grpc-port).
func (c *Control) Replica() string { return c.replica }

// maxReplicaID bounds --replica-id: it is a column in proxy-status and a
// value in the election key.
const maxReplicaID = 128

// validateReplica checks --replica-id (printable, no spaces, bounded) and
// --replica-grpc-addrs (host:port each).
func (o *Options) validateReplica() error {
	if len(o.ReplicaID) > maxReplicaID {
		return fmt.Errorf("replicaId: %d bytes; at most %d", len(o.ReplicaID), maxReplicaID)
	}
	for _, r := range o.ReplicaID {
		if r <= ' ' || r == 0x7f || !unicode.IsPrint(r) {
			return fmt.Errorf("replicaId: %q: only printable characters, no spaces", o.ReplicaID)
		}
	}
	if len(o.ReplicaGRPCAddrs) == 0 {
		return nil
	}
	if _, err := push.ParseAddrs(strings.Join(o.ReplicaGRPCAddrs, ",")); err != nil {
		return fmt.Errorf("replicaGrpcAddrs: %w", err)
	}
	return nil
}
