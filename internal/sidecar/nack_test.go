package sidecar

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/proxy"
	"trellis.dev/trellis/internal/push"
)

// TestInvalidSnapshotNACKedAndLastGoodKept feeds a running sidecar, through
// the real push server and session, a valid snapshot, then an invalid one,
// then a valid one again, and checks every party's view:
//
//   - the control plane sees the NACK, with the proxy's own error text, and
//     proxy-status (Statuses) shows the proxy NACKED at the last good version;
//   - the proxy keeps the last good config: requests still reach orders v1,
//     and its /config still shows the good version, although the refused
//     snapshot also dropped orders' endpoints;
//   - the next valid snapshot is applied (orders v2) and ACKed.
//
// It catches a sidecar that logs a NACK but applies the snapshot anyway
// (requests would fail or /config would move) and one that applies nothing
// but ACKs (the control plane would see SYNCED; orders v1 would never route).
func TestInvalidSnapshotNACKedAndLastGoodKept(t *testing.T) {
	cp := startControlPlane(t)
	cp.mesh.update(func(m *mesh) { m.version = map[string]string{"orders": "v1"} })
	startSidecar(t, cp, Options{Service: "orders", AppAddr: startApp(t, "orders v1"), Labels: map[string]string{"version": "v1"}})
	startSidecar(t, cp, Options{Service: "orders", AppAddr: startApp(t, "orders v2"), Labels: map[string]string{"version": "v2"}})
	fe := startSidecar(t, cp, Options{Service: "frontend", OutboundAddr: "127.0.0.1:0", Upstreams: map[string]string{"orders": "127.0.0.1:0"}})

	// 1. A valid snapshot: ACKed, applied, routed.
	good := waitAnswered(t, cp, "frontend")
	if good.State != push.StateSynced || good.Error != "" {
		t.Fatalf("after a valid snapshot: %+v; want SYNCED", good)
	}
	if code, body := call(t, fe, "orders"); code != 200 || body != "orders v1" {
		t.Fatalf("GET orders = %d %q; want 200 \"orders v1\"", code, body)
	}

	// 2. An invalid one: a service whose name is not a DNS label, while
	// orders loses its endpoints, so applying any of it would show.
	bad := &meshv1.Service{Name: "Bad_Name", Namespace: "default"}
	cp.mesh.update(func(m *mesh) {
		m.version["orders"] = "none"
		m.poison = map[string]*meshv1.Service{"frontend": bad}
	})
	st := waitAnswered(t, cp, "frontend")
	if st.State != push.StateNacked {
		t.Fatalf("after an invalid snapshot: %+v; want NACKED", st)
	}
	if want := refusal(t, cp, "frontend"); st.Error != want {
		t.Errorf("NACK error seen by the control plane = %q; want the proxy's %q", st.Error, want)
	}
	if st.AckedVersion != good.AckedVersion {
		t.Errorf("acked version = %q; want the last good %q", st.AckedVersion, good.AckedVersion)
	}
	if n := cp.srv.Counters().Nacks; n != 1 {
		t.Errorf("control plane counted %d NACKs; want 1", n)
	}
	if code, body := call(t, fe, "orders"); code != 200 || body != "orders v1" {
		t.Errorf("after the NACK, GET orders = %d %q; want the last good config's 200 \"orders v1\"", code, body)
	}
	if v := configVersion(t, fe); v != good.AckedVersion {
		t.Errorf("after the NACK, /config version = %q; want the last good %q", v, good.AckedVersion)
	}

	// 3. Valid again, routing elsewhere: applied and ACKed.
	cp.mesh.update(func(m *mesh) {
		m.version["orders"] = "v2"
		m.poison = nil
	})
	st = waitAnswered(t, cp, "frontend")
	if st.State != push.StateSynced || st.Error != "" || st.AckedVersion == good.AckedVersion {
		t.Fatalf("after a valid snapshot again: %+v; want SYNCED at a new version", st)
	}
	if code, body := call(t, fe, "orders"); code != 200 || body != "orders v2" {
		t.Errorf("GET orders = %d %q; want 200 \"orders v2\"", code, body)
	}
	if v := configVersion(t, fe); v != st.AckedVersion {
		t.Errorf("/config version = %q; want %q", v, st.AckedVersion)
	}
}

// waitAnswered waits until service's proxy has answered (ACK or NACK) the
// snapshot the control plane would send it now, and returns its status.
func waitAnswered(t *testing.T, cp *controlPlane, service string) push.ProxyStatus {
	t.Helper()
	want := currentVersion(t, cp, service)
	var st push.ProxyStatus
	eventually(t, service+" to answer snapshot "+want, func() bool {
		var ok bool
		st, ok = cp.status(service)
		return ok && st.SentVersion == want && st.State != push.StateStale && st.State != push.StatePending
	})
	return st
}

// currentVersion is the version the control plane compiles for service's
// proxy now.
func currentVersion(t *testing.T, cp *controlPlane, service string) string {
	t.Helper()
	st, ok := cp.status(service)
	if !ok {
		t.Fatalf("%s has no watch stream", service)
	}
	snap, err := cp.mesh.Snapshot(t.Context(), push.Node{ID: st.NodeID, Service: service, Namespace: "default", Subscriptions: subscriptionsOf(service)})
	if err != nil {
		t.Fatal(err)
	}
	return snap.GetVersion()
}

func subscriptionsOf(service string) []string {
	if service == "frontend" {
		return []string{"frontend.default", "orders.default"}
	}
	return []string{service + ".default"}
}

// refusal is the error a fresh data plane gives for the snapshot service's
// proxy is being sent: the text the NACK must carry.
func refusal(t *testing.T, cp *controlPlane, service string) string {
	t.Helper()
	snap, err := cp.mesh.Snapshot(t.Context(), push.Node{Service: service, Namespace: "default", Subscriptions: subscriptionsOf(service)})
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Options{Service: service})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Update(snap)
	if err == nil {
		t.Fatalf("the data plane accepts the snapshot meant to be invalid: %v", snap)
	}
	return err.Error()
}

// configVersion reads the applied snapshot's version from the admin port.
func configVersion(t *testing.T, s *sidecar) string {
	t.Helper()
	resp, err := http.Get("http://" + s.proxy.AdminAddr() + "/config")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var c struct{ Version string }
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("/config: %v: %s", err, b)
	}
	return c.Version
}
