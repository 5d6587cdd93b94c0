package control

import (
	"context"
	"fmt"
	"net/http"

	"trellis.dev/trellis/internal/telemetry"
	"trellis.dev/trellis/internal/xds"
)

// xDS wiring: the adapter reads the compiler and view the push uses, and
// serves ADS on the control plane's gRPC port, where the TLS config
// already verifies a client certificate when one is given; the adapter
// refuses xDS streams without one (xds.peerIdentity).

// startXDS registers the adapter on the gRPC server and keeps its
// resources current until ctx ends. Off with Options.XDSOff.
func (c *Control) startXDS(ctx context.Context) error {
	if c.o.XDSOff {
		return nil
	}
	meter, err := telemetry.NewXDSMetrics(c.promReg)
	if err != nil {
		return fmt.Errorf("control: xds metrics: %w", err)
	}
	// Streams end with xctx, before the gRPC server's graceful stop,
	// which would otherwise wait for every xDS client to hang up.
	xctx, cancel := context.WithCancel(ctx)
	c.xdsStop = cancel
	c.xds = xds.New(xctx, c.comp, c.view, xds.Options{TrustDomain: c.o.TrustDomain, Metrics: meter, Logger: c.o.Logger})
	c.xds.Register(c.grpc)
	c.wg.Go(func() { c.xds.Run(xctx) })
	return nil
}

// stopXDS ends the xDS streams (clients reconnect to another replica or
// after a restart) and the resource updates.
func (c *Control) stopXDS() {
	if c.xdsStop != nil {
		c.xdsStop()
	}
}

// xdsClients lists the connected xDS streams (empty when xDS is off).
func (c *Control) xdsClients() []xds.ClientStatus {
	if c.xds == nil {
		return []xds.ClientStatus{}
	}
	return c.xds.Clients()
}

// listXDSClients is GET /v1/xds-clients, what proxy-status shows beside
// the Trellis proxies.
func (a *admin) listXDSClients(w http.ResponseWriter, _ *http.Request) {
	list := []xds.ClientStatus{}
	if a.xdsClients != nil {
		list = a.xdsClients()
	}
	writeJSON(w, http.StatusOK, list)
}
