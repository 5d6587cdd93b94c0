package lb

// LeastRequestPicker is power-of-two-choices over in-flight requests
// (Envoy's LEAST_REQUEST with choice_count 2): of two random endpoints, the
// one with fewer calls in flight; ties go to the first. It reads no clock
// and learns nothing else.
type LeastRequestPicker struct {
	s sampler
}

// Pick implements Picker.
func (p *LeastRequestPicker) Pick(r *Request, eps, tried []*Endpoint) (Call, bool) {
	g := newGate(r, eps, tried)
	a, b := p.s.pair(eps, &g)
	if a == nil {
		return Call{}, false
	}
	if b != nil && b.inflight.Load() < a.inflight.Load() {
		a = b
	}
	a.inflight.Add(1)
	return Call{ep: a}, true
}
