package cli

import (
	"bytes"
	"encoding/json"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// endpointFixture is three endpoints as the admin API encodes them: one
// healthy, one whose app refuses connections, one not checked yet.
func endpointFixture(t *testing.T) []registeredEndpoint {
	t.Helper()
	in := []*meshv1.Endpoint{
		{Id: "orders-default-1", Service: "orders", Namespace: "default", Address: "127.0.0.1:15006", Labels: map[string]string{"app": "orders", "version": "v1"},
			Identity: "spiffe://trellis.local/ns/default/sa/orders", AdminAddress: "127.0.0.1:15000", Healthy: true},
		{Id: "orders-default-2", Service: "orders", Namespace: "default", Address: "127.0.0.1:25006", Labels: map[string]string{"app": "orders", "version": "v2"},
			Identity: "spiffe://trellis.local/ns/default/sa/orders", AdminAddress: "127.0.0.1:25000", HealthReason: "connect refused"},
		{Id: "pay-shop-3", Service: "payments", Namespace: "shop", Address: "127.0.0.1:35006", Labels: map[string]string{"app": "payments"},
			Identity: "spiffe://trellis.local/ns/shop/sa/payments", AdminAddress: "127.0.0.1:35000", HealthReason: "no check passed yet"},
	}
	mo := protojson.MarshalOptions{EmitUnpopulated: true} // as /v1/endpoints
	var out []registeredEndpoint
	for _, ep := range in {
		b, err := mo.Marshal(ep)
		if err != nil {
			t.Fatal(err)
		}
		var r registeredEndpoint
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestGetEndpointsGolden(t *testing.T) {
	eps := endpointFixture(t)
	var buf bytes.Buffer
	if err := printEndpoints(&buf, eps[:2], false, false); err != nil {
		t.Fatal(err)
	}
	golden(t, "get-endpoints", buf.Bytes())
	buf.Reset()
	if err := printEndpoints(&buf, eps, true, true); err != nil {
		t.Fatal(err)
	}
	golden(t, "get-endpoints-wide", buf.Bytes())
}
