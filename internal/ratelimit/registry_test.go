package ratelimit

import "testing"

func TestRegistryKeepsUnchangedPolicies(t *testing.T) {
	var now int64
	r := NewRegistry(func() int64 { return now })
	s := Spec{Limit: perSecond(1, 1)}
	e := r.Bind("default/a", s, false)
	e.Decide("", "", 0)
	if again := r.Bind("default/a", s, false); again != e {
		t.Fatal("an unchanged spec got a new entry: its bucket was refilled")
	}
	if r.Bind("default/a", Spec{Limit: perSecond(2, 1)}, false) == e {
		t.Error("a changed limit kept the old entry")
	}
	over := Spec{Limit: perSecond(1, 1), Overrides: []Override{{Identities: []string{"x"}, Limit: perSecond(5, 1)}}}
	o1 := r.Bind("default/o", over, false)
	over2 := over
	over2.Overrides = []Override{{Identities: []string{"y"}, Limit: perSecond(5, 1)}}
	if r.Bind("default/o", over2, false) == o1 {
		t.Error("changed override identities kept the old entry")
	}
	if r.Bind("default/o", over2, true) == r.Bind("default/o", over2, false) {
		t.Error("a mode change kept the entry")
	}
	live := r.Bind("default/o", over2, true)
	r.Keep(map[string]*Entry{"default/o": o1})
	if len(r.entries) != 1 || r.entries["default/o"] != o1 {
		t.Errorf("after Keep: %v, want only the live entry", r.entries)
	}
	if r.Bind("default/o", over2, true) == live {
		t.Error("an entry dropped by Keep came back")
	}
}

func TestRegistryGlobalShares(t *testing.T) {
	var now int64
	r := NewRegistry(func() int64 { return now })
	r.SetReplicas(4)
	g := r.Bind("default/g", Spec{Limit: perSecond(100, 10)}, true)
	l := r.Bind("default/l", Spec{Limit: perSecond(100, 10)}, false)
	if got := g.Policy().Share(); got != 0.25 {
		t.Errorf("a new global entry's share %v, want 1/4 before any grant", got)
	}
	if got := l.Policy().Share(); got != 1 {
		t.Errorf("a local entry's share %v", got)
	}
	r.Grant(map[string]float64{"default/g": 0.7, "default/l": 0.1})
	if got := g.Policy().Share(); got != 0.7 {
		t.Errorf("granted share %v, want 0.7", got)
	}
	if got := l.Policy().Share(); got != 1 {
		t.Errorf("a grant changed a local entry: %v", got)
	}
	r.SetReplicas(2)
	if got := g.Policy().Share(); got != 0.7 {
		t.Errorf("a replica count change overrode a grant: %v", got)
	}
	r.Degrade()
	if got := g.Policy().Share(); got != 0.5 {
		t.Errorf("degraded share %v, want 1/2", got)
	}
	g.Decide("", "", 0)
	g.Decide("", "", 0)
	d := r.Demands()
	if len(d) != 1 || d[0].Key != "default/g" || d[0].Offered != 2 || d[0].Limit != perSecond(100, 10) {
		t.Errorf("demands %+v", d)
	}
}
