package telemetry

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// SeriesKey identifies one row-relevant series of the proxy's request
// metrics (RequestsTotalName, RequestDurationName); the stat table is
// computed from them, summed over the other labels.
type SeriesKey struct {
	Reporter string // ReporterSource or ReporterDestination
	Service  string // destination service and namespace, e.g. "orders.default"
	Code     string // response_code, e.g. "200"
}

// Histogram is a cumulative Prometheus histogram: Counts[i] observations were
// <= Bounds[i]. Bounds ascend and the last one is +Inf.
type Histogram struct {
	Bounds []float64
	Counts []float64
}

// Sample is one scrape (or the sum of several) of the proxy's request metrics.
type Sample struct {
	Requests  map[SeriesKey]float64
	Durations map[SeriesKey]Histogram
}

// NewSample returns an empty Sample, ready to Add to.
func NewSample() Sample {
	return Sample{Requests: map[SeriesKey]float64{}, Durations: map[SeriesKey]Histogram{}}
}

// Row is one line of the stat table: a service's traffic over a window.
type Row struct {
	Service  string
	RPS      float64
	Success  float64 // fraction of responses that were not 5xx; 0 when Requests is 0
	P50      time.Duration
	P99      time.Duration
	Requests int64
	// Limited counts the responses that were 429 (a RateLimitPolicy's, or
	// the app's own Too Many Requests).
	Limited int64
}

// ParseMetrics reads the Prometheus text exposition format and keeps the
// request counter and duration histogram; other families are ignored.
func ParseMetrics(r io.Reader) (Sample, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Sample{}, fmt.Errorf("telemetry: parse metrics: %w", err)
	}
	s := NewSample()
	if f, ok := fams[RequestsTotalName]; ok {
		for _, m := range f.GetMetric() {
			var v float64
			switch {
			case m.GetCounter() != nil:
				v = m.GetCounter().GetValue()
			case m.GetUntyped() != nil:
				v = m.GetUntyped().GetValue()
			default:
				return Sample{}, fmt.Errorf("telemetry: parse metrics: %s: not a counter", RequestsTotalName)
			}
			if math.IsNaN(v) || v < 0 {
				return Sample{}, fmt.Errorf("telemetry: parse metrics: %s: invalid value %v", RequestsTotalName, v)
			}
			s.Requests[keyOf(m)] += v
		}
	}
	if f, ok := fams[RequestDurationName]; ok {
		for _, m := range f.GetMetric() {
			h, err := histogramOf(m)
			if err != nil {
				return Sample{}, fmt.Errorf("telemetry: parse metrics: %s: %w", RequestDurationName, err)
			}
			k := keyOf(m)
			if old, ok := s.Durations[k]; ok {
				h = addHistograms(old, h)
			}
			s.Durations[k] = h
		}
	}
	return s, nil
}

func keyOf(m *dto.Metric) SeriesKey {
	var k SeriesKey
	var name, ns string
	for _, l := range m.GetLabel() {
		switch l.GetName() {
		case "reporter":
			k.Reporter = l.GetValue()
		case "destination_service":
			name = l.GetValue()
		case "destination_namespace":
			ns = l.GetValue()
		case "response_code":
			k.Code = l.GetValue()
		}
	}
	k.Service = name
	if ns != "" {
		k.Service = name + "." + ns
	}
	return k
}

func histogramOf(m *dto.Metric) (Histogram, error) {
	dh := m.GetHistogram()
	if dh == nil {
		return Histogram{}, fmt.Errorf("not a histogram")
	}
	total := max(float64(dh.GetSampleCount()), dh.GetSampleCountFloat())
	type bucket struct{ le, n float64 }
	bs := make([]bucket, 0, len(dh.GetBucket())+1)
	for _, b := range dh.GetBucket() {
		le := b.GetUpperBound()
		n := max(float64(b.GetCumulativeCount()), b.GetCumulativeCountFloat())
		if math.IsNaN(le) || math.IsNaN(n) || n < 0 {
			return Histogram{}, fmt.Errorf("invalid bucket le=%v count=%v", le, n)
		}
		bs = append(bs, bucket{le, n})
	}
	sort.SliceStable(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	if len(bs) == 0 || !math.IsInf(bs[len(bs)-1].le, 1) {
		bs = append(bs, bucket{math.Inf(1), total})
	}
	h := Histogram{Bounds: make([]float64, 0, len(bs)), Counts: make([]float64, 0, len(bs))}
	for _, b := range bs {
		// Coalesce duplicate bounds, as Prometheus does.
		if n := len(h.Bounds); n > 0 && h.Bounds[n-1] == b.le {
			h.Counts[n-1] = max(h.Counts[n-1], b.n)
			continue
		}
		h.Bounds = append(h.Bounds, b.le)
		h.Counts = append(h.Counts, b.n)
	}
	return h, nil
}

// Relabel returns a copy of s with every series' service set to service. It
// lets a caller that knows which proxy it scraped (inventory v1 or v2, which
// share the destination_service "inventory.default") name its rows.
func (s Sample) Relabel(service string) Sample {
	out := NewSample()
	for k, v := range s.Requests {
		k.Service = service
		out.Requests[k] += v
	}
	for k, h := range s.Durations {
		k.Service = service
		if old, ok := out.Durations[k]; ok {
			h = addHistograms(old, h)
		}
		out.Durations[k] = h
	}
	return out
}

// Add sums o into s, series by series.
func (s Sample) Add(o Sample) {
	for k, v := range o.Requests {
		s.Requests[k] += v
	}
	for k, h := range o.Durations {
		if old, ok := s.Durations[k]; ok {
			h = addHistograms(old, h)
		}
		s.Durations[k] = h
	}
}

// cumAt is the cumulative count of h at bound b: the count of h's largest
// bound <= b. When bounds match (always, for Trellis proxies) it is exact.
func cumAt(h Histogram, b float64) float64 {
	i := sort.SearchFloat64s(h.Bounds, b)
	if i < len(h.Bounds) && h.Bounds[i] == b {
		return h.Counts[i]
	}
	if i == 0 {
		return 0
	}
	return h.Counts[i-1]
}

func unionBounds(a, b Histogram) []float64 {
	if slices.Equal(a.Bounds, b.Bounds) {
		return slices.Clone(a.Bounds)
	}
	u := append(slices.Clone(a.Bounds), b.Bounds...)
	slices.Sort(u)
	return slices.Compact(u)
}

func addHistograms(a, b Histogram) Histogram {
	bounds := unionBounds(a, b)
	out := Histogram{Bounds: bounds, Counts: make([]float64, len(bounds))}
	for i, le := range bounds {
		out.Counts[i] = cumAt(a, le) + cumAt(b, le)
	}
	return out
}

// subHistograms is cur - prev per bucket. A counter reset (any bucket going
// down) means the process restarted, so cur alone is the increase.
func subHistograms(cur, prev Histogram) Histogram {
	out := Histogram{Bounds: slices.Clone(cur.Bounds), Counts: make([]float64, len(cur.Bounds))}
	for i, le := range cur.Bounds {
		d := cur.Counts[i] - cumAt(prev, le)
		if d < 0 {
			return Histogram{Bounds: slices.Clone(cur.Bounds), Counts: slices.Clone(cur.Counts)}
		}
		out.Counts[i] = d
	}
	return out
}

// Rows computes one row per service from the destination-side series of two samples
// taken window apart: the increase of the request counter gives RPS and
// success rate, the increase of the duration histogram gives the latency
// quantiles. Rows are sorted by service.
func Rows(prev, cur Sample, window time.Duration) []Row {
	type acc struct {
		total, failed, limited float64
		hist                   Histogram
		hasHist                bool
	}
	by := map[string]*acc{}
	get := func(svc string) *acc {
		a := by[svc]
		if a == nil {
			a = &acc{}
			by[svc] = a
		}
		return a
	}
	for k, v := range cur.Requests {
		if k.Reporter != ReporterDestination {
			continue
		}
		d := v - prev.Requests[k]
		if d < 0 { // counter reset
			d = v
		}
		a := get(k.Service)
		a.total += d
		if strings.HasPrefix(k.Code, "5") {
			a.failed += d
		}
		if k.Code == "429" {
			a.limited += d
		}
	}
	for k, h := range cur.Durations {
		if k.Reporter != ReporterDestination {
			continue
		}
		if p, ok := prev.Durations[k]; ok {
			h = subHistograms(h, p)
		}
		a := get(k.Service)
		if a.hasHist {
			a.hist = addHistograms(a.hist, h)
		} else {
			a.hist, a.hasHist = h, true
		}
	}
	rows := make([]Row, 0, len(by))
	for svc, a := range by {
		r := Row{Service: svc, Requests: int64(math.Round(a.total)), Limited: int64(math.Round(a.limited))}
		if window > 0 {
			r.RPS = a.total / window.Seconds()
		}
		if a.total > 0 {
			r.Success = (a.total - a.failed) / a.total
		}
		if a.hasHist {
			r.P50 = seconds(histogramQuantile(0.50, a.hist))
			r.P99 = seconds(histogramQuantile(0.99, a.hist))
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Service < rows[j].Service })
	return rows
}

func seconds(s float64) time.Duration {
	if math.IsNaN(s) || math.IsInf(s, 0) || s < 0 {
		return 0
	}
	return time.Duration(s * float64(time.Second))
}

// histogramQuantile estimates the q-quantile of h the way Prometheus'
// histogram_quantile does: find the bucket holding rank q*count and
// interpolate linearly inside it; a rank in the +Inf bucket yields the
// highest finite bound. It returns NaN when there is nothing to estimate.
func histogramQuantile(q float64, h Histogram) float64 {
	n := len(h.Bounds)
	if math.IsNaN(q) || q < 0 || q > 1 || n < 2 || len(h.Counts) != n || !math.IsInf(h.Bounds[n-1], 1) {
		return math.NaN()
	}
	// Scrapes are not atomic across buckets; make the counts monotonic.
	counts := slices.Clone(h.Counts)
	for i := 1; i < n; i++ {
		counts[i] = max(counts[i], counts[i-1])
	}
	total := counts[n-1]
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	b := sort.Search(n-1, func(i int) bool { return counts[i] >= rank })
	if b == n-1 {
		return h.Bounds[n-2]
	}
	if b == 0 && h.Bounds[0] <= 0 {
		return h.Bounds[0]
	}
	start, end, count := 0.0, h.Bounds[b], counts[b]
	if b > 0 {
		start = h.Bounds[b-1]
		count -= counts[b-1]
		rank -= counts[b-1]
	}
	if count == 0 {
		return start
	}
	return start + (end-start)*(rank/count)
}
