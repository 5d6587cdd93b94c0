package lb

// RandomPicker picks an endpoint uniformly at random (weighted by slow
// start). Like round robin it uses no feedback: its calls only count as in
// flight.
type RandomPicker struct {
	s sampler
}

// Pick implements Picker.
func (p *RandomPicker) Pick(r *Request, eps, tried []*Endpoint) (Call, bool) {
	g := newGate(r, eps, tried)
	e := p.s.first(eps, &g)
	if e == nil {
		return Call{}, false
	}
	e.inflight.Add(1)
	return Call{ep: e}, true
}
