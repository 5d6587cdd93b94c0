package demo

import (
	"log/slog"
	"net"

	controlplane "trellis.dev/trellis/internal/control"
)

// logDNS says where the demo's control plane serves DNS. It serves the
// default 127.0.0.1:8600 like any `trellis control`; when that port is busy
// (another control plane, a local resolver) it starts without DNS and says
// so in control.log, and so does the demo, which needs no DNS itself.
func logDNS(log *slog.Logger, dataDir string) {
	a, err := controlplane.ReadAddrs(dataDir)
	if err != nil {
		return
	}
	if a.DNS == "" {
		log.Warn("control plane serves no DNS: its port is busy (see control.log)")
		return
	}
	host, port, err := net.SplitHostPort(a.DNS)
	if err != nil {
		return
	}
	log.Info("DNS ready", "addr", a.DNS, "try", "dig @"+host+" -p "+port+" orders.default.svc.trellis.local")
}
