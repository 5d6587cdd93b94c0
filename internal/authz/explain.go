package authz

// Explanation is Decide's decision with the reasoning behind it, for
// `trellis auth check`: every policy in evaluation order, each rule with the
// first condition it failed. It is built from the same rule evaluation
// Decide runs, and its Decision is Decide's own.
type Explanation struct {
	Decision     Decision
	DefaultAllow bool
	// Policies in evaluation order: DENY policies, then ALLOW policies.
	Policies []PolicyTrace
}

// PolicyTrace is how one policy's rules fared.
type PolicyTrace struct {
	Index  int // in Engine.Policies
	Name   string
	Action string // ALLOW or DENY
	Rules  []RuleTrace
}

// RuleTrace is one rule: matched, or the condition it failed.
type RuleTrace struct {
	Matched bool
	Failed  Cond // when not matched
}

// Explain evaluates f as Decide does and says why.
func (e *Engine) Explain(f *Facts) Explanation {
	ex := Explanation{Decision: e.Decide(f), DefaultAllow: e.defaultAllow}
	q := query{Facts: f, ns: namespaceOf(f.PeerID)}
	order := append(append([]int(nil), e.deny...), e.allow...)
	for _, i := range order {
		p := &e.policies[i]
		pt := PolicyTrace{Index: i, Name: p.name, Action: e.action[i]}
		for j := range p.rules {
			c := p.rules[j].mismatch(&q, p.deny)
			pt.Rules = append(pt.Rules, RuleTrace{Matched: c == condNone, Failed: c})
		}
		ex.Policies = append(ex.Policies, pt)
	}
	return ex
}
