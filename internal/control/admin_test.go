package control

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/apply"
	"trellis.dev/trellis/internal/store"
)

func TestAdminRequiresToken(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	for _, tt := range []struct{ name, token string }{
		{"none", ""},
		{"wrong", strings.Repeat("0", 64)},
		{"prefix of the right one", cl.token[:10]},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, path := range []string{"/v1/proxies", "/v1/resources/services", "/v1/nope"} {
				status, body := cl.doToken("GET", path, nil, tt.token)
				if status != http.StatusUnauthorized || !strings.Contains(string(body), "admin-token") {
					t.Errorf("GET %s: %d %s, want 401 naming admin-token", path, status, body)
				}
			}
			rev := revision(t, c)
			status, _ := cl.doToken("POST", "/v1/apply", applyBody(false, file{"s.yaml", serviceYAML}), tt.token)
			if status != http.StatusUnauthorized || revision(t, c) != rev {
				t.Errorf("apply without the token: %d, revision %d -> %d", status, rev, revision(t, c))
			}
		})
	}
}

func TestApplyGetDelete(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)

	status, a := cl.apply(false, file{"svc.yaml", serviceYAML}, file{"route.yaml", routeYAML("split", 90)})
	if status != http.StatusOK {
		t.Fatalf("apply: %d %+v", status, a)
	}
	if got, want := a.actions(), "Service default/inventory=created,HTTPRoute default/split=created"; got != want {
		t.Fatalf("actions %s, want %s", got, want)
	}
	if a.Revision != revision(t, c) {
		t.Errorf("answer revision %d, store at %d", a.Revision, revision(t, c))
	}
	first := a.Revision

	// Same again: unchanged, no new revision.
	_, a = cl.apply(false, file{"svc.yaml", serviceYAML}, file{"route.yaml", routeYAML("split", 90)})
	if got := a.actions(); got != "Service default/inventory=unchanged,HTTPRoute default/split=unchanged" || a.Revision != first {
		t.Fatalf("re-apply: %s at %d, want unchanged at %d", got, a.Revision, first)
	}

	// Read back, under the kind's several spellings.
	status, body := cl.do("GET", "/v1/resources/httproute/default/split", nil)
	if status != http.StatusOK {
		t.Fatalf("get: %d %s", status, body)
	}
	var route struct {
		Metadata struct {
			Name              string `json:"name"`
			CreationTimestamp string `json:"creationTimestamp"`
		} `json:"metadata"`
		Spec struct {
			Rules []struct {
				BackendRefs []struct {
					Weight int `json:"weight"`
				} `json:"backendRefs"`
			} `json:"rules"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(body, &route); err != nil {
		t.Fatal(err)
	}
	if route.Metadata.Name != "split" || route.Spec.Rules[0].BackendRefs[0].Weight != 90 || route.Metadata.CreationTimestamp == "" {
		t.Fatalf("got %s", body)
	}
	created := route.Metadata.CreationTimestamp
	for _, kind := range []string{"httproutes", "HTTPRoutes", "HTTPRoute"} {
		status, body := cl.do("GET", "/v1/resources/"+kind, nil)
		var list struct {
			Items []json.RawMessage `json:"items"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list.Items) != 1 {
			t.Errorf("list %s: %d %s", kind, status, body)
		}
	}

	// Update: configured, new revision, creation time kept.
	time.Sleep(1100 * time.Millisecond) // creation timestamps have second resolution
	_, a = cl.apply(false, file{"route.yaml", routeYAML("split", 50)})
	if got := a.actions(); got != "HTTPRoute default/split=configured" || a.Revision <= first {
		t.Fatalf("update: %s at %d", got, a.Revision)
	}
	_, body = cl.do("GET", "/v1/resources/httproutes/default/split", nil)
	json.Unmarshal(body, &route)
	if route.Spec.Rules[0].BackendRefs[0].Weight != 50 || route.Metadata.CreationTimestamp != created {
		t.Fatalf("after update: weight %d created %s (was %s)", route.Spec.Rules[0].BackendRefs[0].Weight, route.Metadata.CreationTimestamp, created)
	}

	// Delete, then it is gone.
	status, body = cl.do("DELETE", "/v1/resources/httproutes/default/split", nil)
	if status != http.StatusOK || !strings.Contains(string(body), "deleted") {
		t.Fatalf("delete: %d %s", status, body)
	}
	status, body = cl.do("GET", "/v1/resources/httproutes/default/split", nil)
	if status != http.StatusNotFound || !strings.Contains(string(body), "HTTPRoute default/split not found") {
		t.Fatalf("get after delete: %d %s", status, body)
	}
	status, _ = cl.do("DELETE", "/v1/resources/httproutes/default/split", nil)
	if status != http.StatusNotFound {
		t.Fatalf("second delete: %d", status)
	}
}

func TestApplyRefusesInvalidAndChangesNothing(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	if status, a := cl.apply(false, file{"svc.yaml", serviceYAML}); status != http.StatusOK {
		t.Fatalf("seed: %d %+v", status, a)
	}
	badWeight := strings.Replace(routeYAML("bad", 90), "weight: 10", "weight: -5", 1)
	undeclaredPort := strings.Replace(routeYAML("port", 90), "    port: 80\n  rules", "    port: 8080\n  rules", 1)
	tests := []struct {
		name  string
		files []file
		want  []string
	}{
		{"invalid field", []file{{"good.yaml", routeYAML("good", 90)}, {"bad.yaml", badWeight}},
			[]string{"bad.yaml: document 1 (HTTPRoute default/bad): spec.rules[0].backendRefs[1].weight"}},
		{"not yaml", []file{{"junk.yaml", "kind: [unclosed"}}, []string{"junk.yaml"}},
		{"unknown kind", []file{{"k.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"}}, []string{"k.yaml", "Pod"}},
		{"duplicate across files", []file{{"a.yaml", routeYAML("dup", 90)}, {"b.yaml", routeYAML("dup", 80)}}, []string{"HTTPRoute default/dup"}},
		{"port the stored Service does not declare", []file{{"p.yaml", undeclaredPort}}, []string{"p.yaml", "8080"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := revision(t, c)
			status, a := cl.apply(false, tt.files...)
			if status != http.StatusUnprocessableEntity {
				t.Fatalf("status %d (%+v), want 422", status, a)
			}
			joined := strings.Join(a.Errors, "\n")
			for _, w := range tt.want {
				if !strings.Contains(joined, w) {
					t.Errorf("errors %q do not mention %q", a.Errors, w)
				}
			}
			if after := revision(t, c); after != before {
				t.Errorf("store revision moved %d -> %d on a refused apply", before, after)
			}
		})
	}
	status, body := cl.do("GET", "/v1/resources/httproutes", nil)
	if status != http.StatusOK || strings.Contains(string(body), `"good"`) {
		t.Fatalf("the valid file of a refused apply was stored: %s", body)
	}
}

func TestApplyDryRunAndBase64(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	before := revision(t, c)
	status, a := cl.apply(true, file{"svc.yaml", serviceYAML})
	if status != http.StatusOK || a.actions() != "Service default/inventory=created" || revision(t, c) != before {
		t.Fatalf("dry run: %d %s, revision %d -> %d", status, a.actions(), before, revision(t, c))
	}
	if status, _ := cl.do("GET", "/v1/resources/services/default/inventory", nil); status != http.StatusNotFound {
		t.Fatalf("dry run stored the service: %d", status)
	}
	enc := base64.StdEncoding.EncodeToString([]byte(serviceYAML))
	status, a = cl.apply(false, file{"svc.yaml", enc})
	if status != http.StatusOK || a.actions() != "Service default/inventory=created" {
		t.Fatalf("base64 content: %d %+v", status, a)
	}
}

func TestAdminMalformedRequests(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	// The limit is lowered so that the test stays fast under -race.
	c.admin.maxBody.Store(64 << 10)
	big := `{"files":[{"name":"x.yaml","content":"` + strings.Repeat("a", 64<<10) + `"}]}`
	tests := []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"not json", "POST", "/v1/apply", "files: []", 400, "malformed"},
		{"unknown field", "POST", "/v1/apply", `{"files":[],"force":true}`, 400, "force"},
		{"trailing data", "POST", "/v1/apply", `{"files":[{"name":"a","content":"b"}]} {}`, 400, "trailing"},
		{"wrong type", "POST", "/v1/apply", `{"files":"x"}`, 400, "malformed"},
		{"no files", "POST", "/v1/apply", `{"files":[]}`, 400, "at least one file"},
		{"empty body", "POST", "/v1/apply", ``, 400, "malformed"},
		{"too big", "POST", "/v1/apply", big, 413, "exceeds 65536 bytes"},
		{"unknown kind", "GET", "/v1/resources/pods", "", 404, `unknown kind \"pods\"`},
		{"unknown kind one", "GET", "/v1/resources/pods/default/x", "", 404, "known kinds are"},
		{"unknown path", "GET", "/v2/everything", "", 404, "no such API"},
		{"huge kind clipped", "GET", "/v1/resources/" + strings.Repeat("k", 200<<10), "", 404, "more bytes]"},
		{"bad namespace", "GET", "/v1/resources/services/Shop/orders", "", 400, `namespace: \"Shop\" is not a valid name`},
		{"bad name", "DELETE", "/v1/resources/services/default/orders_v2", "", 400, `name: \"orders_v2\" is not a valid name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := revision(t, c)
			var body []byte
			if tt.body != "" || tt.method == "POST" {
				body = []byte(tt.body)
			}
			status, got := cl.do(tt.method, tt.path, body)
			if status != tt.status || !strings.Contains(string(got), tt.want) || len(got) > 8<<10 {
				t.Fatalf("%d %.200s, want %d containing %q", status, got, tt.status, tt.want)
			}
			if revision(t, c) != before {
				t.Fatal("store changed")
			}
		})
	}
}

func TestConcurrentApplies(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	const n = 12
	var wg sync.WaitGroup
	errs := make(chan string, 2*n)
	for i := range n {
		wg.Go(func() {
			// Each writer creates its own route and rewrites a shared one.
			status, a := cl.apply(false, file{"own.yaml", routeYAML(fmt.Sprintf("r%d", i), 50)}, file{"shared.yaml", routeYAML("shared", i)})
			if status != http.StatusOK {
				errs <- fmt.Sprintf("writer %d: %d %+v", i, status, a)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	status, body := cl.do("GET", "/v1/resources/httproutes", nil)
	var list struct {
		Items []json.RawMessage `json:"items"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list.Items) != n+1 {
		t.Fatalf("after %d concurrent applies: %d routes (%d), want %d", n, len(list.Items), status, n+1)
	}
}

func TestProxiesAndEndpoints(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	status, body := cl.do("GET", "/v1/proxies", nil)
	if status != http.StatusOK || strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("proxies: %d %s", status, body)
	}
	ep := &meshv1.Endpoint{Id: "o-1", Service: "orders", Namespace: "default", Address: "127.0.0.1:15006", Healthy: true}
	if _, _, err := c.reg.Register(context.Background(), ep, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	status, body = cl.do("GET", "/v1/endpoints", nil)
	var eps []map[string]any
	if status != http.StatusOK || json.Unmarshal(body, &eps) != nil || len(eps) != 1 || eps[0]["id"] != "o-1" || eps[0]["address"] != "127.0.0.1:15006" {
		t.Fatalf("endpoints: %d %s", status, body)
	}
}

func FuzzApplyBody(f *testing.F) {
	st, err := store.NewBolt(filepath.Join(f.TempDir(), "store.db"), store.BoltOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	a := newAdmin(adminDeps{store: st, applier: apply.New(st, apply.Options{}), token: "t"})
	f.Add(string(applyBody(false, file{"svc.yaml", serviceYAML})))
	f.Add(string(applyBody(true, file{"r.yaml", routeYAML("x", 10)})))
	f.Add(`{"files":[{"name":"a","content":"YXBpVmVyc2lvbjogdjE="}]}`)
	f.Add(`{"files":null}`)
	f.Add(`[`)
	f.Fuzz(func(t *testing.T, body string) {
		req := httptest.NewRequest("POST", "/v1/apply", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer t")
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("answer is not JSON: %q", rec.Body)
		}
	})
}
