package telemetry

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// gathered is every series of reg, "name,label=value,…" → count (a
// histogram's sample count).
func gathered(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, met := range mf.GetMetric() {
			var b strings.Builder
			b.WriteString(mf.GetName())
			for _, lp := range met.GetLabel() {
				b.WriteString("," + lp.GetName() + "=" + lp.GetValue())
			}
			v := met.GetCounter().GetValue()
			if met.GetHistogram() != nil {
				v = float64(met.GetHistogram().GetSampleCount())
			}
			if met.GetGauge() != nil {
				v = met.GetGauge().GetValue()
			}
			got[b.String()] = v
		}
	}
	return got
}

// key is "name,labels…" with the labels sorted, as gathered writes them.
func key(name, labels string) string {
	ls := strings.Split(strings.TrimPrefix(labels, ","), ",")
	slices.Sort(ls)
	return name + "," + strings.Join(ls, ",")
}

var (
	frontend = Peer{"frontend", "shop", "spiffe://trellis.local/ns/shop/sa/frontend"}
	orders   = Peer{"orders", "shop", "spiffe://trellis.local/ns/shop/sa/orders"}
)

func TestSeriesLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewProxyMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	out := m.Series(SeriesLabels{Reporter: ReporterSource, Source: frontend, Destination: orders, Route: "shop/orders/rules[0]"})
	out.Request(Result{Code: 200, GRPCStatus: None, Flags: NoFlags, MTLS: true, Duration: 3 * time.Millisecond, RequestBytes: 10, ResponseBytes: 100})
	out.Request(Result{Code: 200, GRPCStatus: None, Flags: NoFlags, MTLS: true, Duration: 20 * time.Millisecond})
	out.Request(Result{Code: 200, GRPCStatus: GRPCStatus("14"), Flags: NoFlags, MTLS: true})
	out.Request(Result{Code: 42, GRPCStatus: None, Flags: NoFlags, MTLS: true}) // outside the fast range
	in := m.Sources(orders).Series("frontend", frontend.Identity)
	in.Request(Result{Code: 503, GRPCStatus: None, Flags: "LA", MTLS: false})
	unknown := m.Series(SeriesLabels{Reporter: ReporterSource, Source: frontend})
	unknown.Request(Result{Code: 503, GRPCStatus: None, Flags: "NC", MTLS: true})

	got := gathered(t, reg)
	const outL = ",reporter=source,source_service=frontend,source_namespace=shop,source_identity=spiffe://trellis.local/ns/shop/sa/frontend,destination_service=orders,destination_namespace=shop,destination_identity=spiffe://trellis.local/ns/shop/sa/orders,route=shop/orders/rules[0]"
	for k, v := range map[string]float64{
		key(RequestsTotalName, outL+",response_code=200,grpc_status=-,response_flags=-,mtls=true"):   2,
		key(RequestsTotalName, outL+",response_code=200,grpc_status=14,response_flags=-,mtls=true"):  1,
		key(RequestsTotalName, outL+",response_code=42,grpc_status=-,response_flags=-,mtls=true"):    1,
		key(RequestDurationName, outL+",response_code=200,grpc_status=-,response_flags=-,mtls=true"): 2,
		key(RequestBytesName, outL+",response_code=200,grpc_status=-,response_flags=-,mtls=true"):    2,
		key(ResponseBytesName, outL+",response_code=200,grpc_status=-,response_flags=-,mtls=true"):   2,
		key(RequestsTotalName, ",reporter=destination,source_service=frontend,source_namespace=shop,source_identity=spiffe://trellis.local/ns/shop/sa/frontend,destination_service=orders,destination_namespace=shop,destination_identity=spiffe://trellis.local/ns/shop/sa/orders,route=-,response_code=503,grpc_status=-,response_flags=LA,mtls=false"): 1,
		key(RequestsTotalName, ",reporter=source,source_service=frontend,source_namespace=shop,source_identity=spiffe://trellis.local/ns/shop/sa/frontend,destination_service=unknown,destination_namespace=unknown,destination_identity=unknown,route=-,response_code=503,grpc_status=-,response_flags=NC,mtls=true"):                                    1,
	} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if t.Failed() {
		t.Logf("all: %v", got)
	}
}

// TestDurationBuckets: the classic buckets are fine enough that 3 ms and
// 20 ms are not counted in one bucket with 5 ms and 25 ms, and the native
// histogram is there too.
func TestDurationBuckets(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewProxyMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s := m.Series(SeriesLabels{Reporter: ReporterSource})
	for _, d := range []time.Duration{3 * time.Millisecond, 20 * time.Millisecond} {
		s.Request(Result{Code: 200, GRPCStatus: None, Flags: NoFlags, MTLS: true, Duration: d})
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != RequestDurationName {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		if len(h.GetBucket()) != len(RequestDurationBuckets) {
			t.Fatalf("buckets = %d, want %d", len(h.GetBucket()), len(RequestDurationBuckets))
		}
		cum := map[float64]uint64{}
		for _, b := range h.GetBucket() {
			cum[b.GetUpperBound()] = b.GetCumulativeCount()
		}
		if cum[.003] != 1 || cum[.002] != 0 || cum[.02] != 2 || cum[.015] != 1 {
			t.Errorf("cumulative counts %v: want 3ms in le=0.003 and 20ms in le=0.02", cum)
		}
		if h.GetSchema() == 0 && len(h.GetPositiveSpan()) == 0 {
			t.Errorf("no native histogram: schema %d, spans %v", h.GetSchema(), h.GetPositiveSpan())
		}
		if h.GetSchema() < 2 {
			t.Errorf("native schema %d, want >= 2 (factor %v)", h.GetSchema(), NativeBucketFactor)
		}
		return
	}
	t.Fatal("no duration family")
}

func TestProxyMetricsDoubleRegister(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewProxyMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := NewProxyMetrics(reg); err == nil {
		t.Fatal("second registration on the same registry succeeded")
	}
}

func TestDisabledRecordsNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewProxyMetrics(reg, ProxyMetricsOptions{DisableRequests: true})
	if err != nil {
		t.Fatal(err)
	}
	s := m.Series(SeriesLabels{Reporter: ReporterSource})
	s.Request(Result{Code: 200})
	m.Sources(orders).Series("frontend", frontend.Identity).Request(Result{Code: 200})
	if m.Active(ReporterSource) != nil {
		t.Error("an active gauge with requests disabled")
	}
	for k := range gathered(t, reg) {
		if strings.HasPrefix(k, "trellis_request") || strings.HasPrefix(k, ActiveRequestsName) {
			t.Errorf("disabled, yet %s", k)
		}
	}
}

func TestHotPathAllocs(t *testing.T) {
	m, err := NewProxyMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s := m.Series(SeriesLabels{Reporter: ReporterSource, Source: frontend, Destination: orders})
	src := m.Sources(orders)
	ok := Result{Code: 200, GRPCStatus: None, Flags: NoFlags, MTLS: true, Duration: time.Millisecond, RequestBytes: 5, ResponseBytes: 5000}
	uh := Result{Code: 503, GRPCStatus: None, Flags: "UH", MTLS: true, Duration: time.Millisecond}
	grpc := Result{Code: 200, GRPCStatus: GRPCStatus("5"), Flags: NoFlags, MTLS: true}
	run := func() {
		s.Request(ok)
		s.Request(uh)
		s.Request(grpc)
		src.Series("frontend", frontend.Identity).Request(ok)
	}
	run()
	if n := testing.AllocsPerRun(100, run); n != 0 {
		t.Fatalf("allocs per cached request = %v, want 0", n)
	}
}

func TestSourcesBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewProxyMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	src := m.Sources(orders)
	ok := Result{Code: 200, GRPCStatus: None, Flags: NoFlags, MTLS: true}
	for i := range MaxSources + 50 {
		src.Series(strings.Repeat("a", i%60+1)+string(rune('a'+i/60)), frontend.Identity).Request(ok)
	}
	// A caller without a verified identity, or a service name that is not
	// a DNS label, reads unknown.
	src.Series("frontend", "").Request(ok)
	src.Series("Not_A_Label", frontend.Identity).Request(ok)
	series := 0
	for k := range gathered(t, reg) {
		if strings.HasPrefix(k, RequestsTotalName+",") {
			series++
		}
	}
	if series > MaxSources+2 {
		t.Fatalf("%d series from one destination, want at most %d", series, MaxSources+2)
	}
	got := gathered(t, reg)
	k := key(RequestsTotalName, ",reporter=destination,source_service=unknown,source_namespace=unknown,source_identity=unknown,destination_service=orders,destination_namespace=shop,destination_identity=spiffe://trellis.local/ns/shop/sa/orders,route=-,response_code=200,grpc_status=-,response_flags=-,mtls=true")
	if got[k] < 51 { // 50 past the bound, one without identity
		t.Errorf("%s = %v, want >= 51", k, got[k])
	}
}

func TestGRPCStatus(t *testing.T) {
	for in, want := range map[string]string{"": None, "0": "0", "9": "9", "10": "10", "16": "16", "17": Unknown, "-1": Unknown, "abc": Unknown, "01": Unknown} {
		if got := GRPCStatus(in); got != want {
			t.Errorf("GRPCStatus(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSPIFFENamespace(t *testing.T) {
	for in, want := range map[string]string{
		"spiffe://trellis.local/ns/shop/sa/orders": "shop",
		"spiffe://td/ns/a/sa/b":                    "a",
		"spiffe://td/ns/Bad_/sa/b":                 "",
		"spiffe://td/sa/b":                         "",
		"https://td/ns/a/sa/b":                     "",
		"":                                         "",
	} {
		got, ok := SPIFFENamespace(in)
		if got != want || ok != (want != "") {
			t.Errorf("SPIFFENamespace(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func FuzzSPIFFENamespace(f *testing.F) {
	f.Add("spiffe://trellis.local/ns/shop/sa/orders")
	f.Add("spiffe://x/ns//sa/")
	f.Fuzz(func(t *testing.T, id string) {
		ns, ok := SPIFFENamespace(id)
		if ok && (!strings.Contains(id, "/ns/"+ns+"/sa/") || ns == "") {
			t.Fatalf("SPIFFENamespace(%q) = %q, not its namespace", id, ns)
		}
		_ = GRPCStatus(id)
	})
}

func TestTCPSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewProxyMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	tc := m.TCP(SeriesLabels{Reporter: ReporterSource, Source: frontend, Destination: Peer{Service: "db", Namespace: "shop"}})
	tc.Opened()
	tc.Opened()
	tc.Closed(100, 7)
	got := gathered(t, reg)
	const l = ",reporter=source,source_service=frontend,source_namespace=shop,destination_service=db,destination_namespace=shop"
	for k, v := range map[string]float64{key(TCPOpenedName, l): 2, key(TCPClosedName, l): 1, key(TCPOpenName, l): 1, key(TCPSentName, l): 100, key(TCPReceivedName, l): 7} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestCertExpiry(t *testing.T) {
	reg := prometheus.NewRegistry()
	var na time.Time
	if err := RegisterCertExpiry(reg, func() time.Time { return na }); err != nil {
		t.Fatal(err)
	}
	if _, ok := gathered(t, reg)[CertExpiryName]; ok {
		t.Error("expiry shown before any certificate")
	}
	na = time.Unix(1800000000, 0)
	if got := gathered(t, reg)[CertExpiryName]; got != 1800000000 {
		t.Errorf("expiry = %v, want 1800000000", got)
	}
}

// TestStatSumsOverFlags: the stat table reads the proxy's metrics; series
// that differ only in labels other than reporter, destination and code
// add up to one row key.
func TestStatSumsOverFlags(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewProxyMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	d := m.Series(SeriesLabels{Reporter: ReporterSource, Destination: orders, Route: "r"})
	d.Request(Result{Code: 503, GRPCStatus: None, Flags: NoFlags, MTLS: true})
	d.Request(Result{Code: 503, GRPCStatus: None, Flags: "UH", MTLS: true})
	m.Series(SeriesLabels{Reporter: ReporterSource, Destination: Peer{Service: "orders", Namespace: "shop", Identity: "x"}}).Request(Result{Code: 503, GRPCStatus: None, Flags: "UH"})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	s, err := ParseMetrics(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	k := SeriesKey{Reporter: ReporterSource, Service: "orders.shop", Code: "503"}
	if s.Requests[k] != 3 {
		t.Fatalf("requests %v = %v, want 3 (all: %v)", k, s.Requests[k], s.Requests)
	}
	if h := s.Durations[k]; len(h.Counts) == 0 || h.Counts[len(h.Counts)-1] != 3 {
		t.Fatalf("duration histogram %v, want 3 observations", h)
	}
}

// TestSourcePeer: the caller's namespace and identity only from a verified
// SPIFFE ID, its asserted service only as a DNS label beside one.
func TestSourcePeer(t *testing.T) {
	id := frontend.Identity
	for _, tt := range []struct {
		service, identity string
		want              Peer
	}{
		{"frontend", id, Peer{"frontend", "shop", id}},
		{"Not_A_Label", id, Peer{"", "shop", id}},
		{"", id, Peer{"", "shop", id}},
		{"frontend", "", Peer{}},
		{"frontend", "spiffe://td/no-namespace", Peer{}},
	} {
		if got := SourcePeer(tt.service, tt.identity); got != tt.want {
			t.Errorf("SourcePeer(%q, %q) = %+v, want %+v", tt.service, tt.identity, got, tt.want)
		}
	}
}
