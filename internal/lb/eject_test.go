package lb

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// TestEjected: an ejection lasts until its end, a later Eject replaces an
// earlier one, and an ejection in the past is none.
func TestEjected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := NewEndpoint("a")
		start := time.Now()
		if e.Ejected(start) {
			t.Fatal("a new endpoint is ejected")
		}
		e.Eject(start.Add(10 * time.Second))
		if !e.Ejected(start) || !e.Ejected(start.Add(10*time.Second-1)) {
			t.Fatal("not ejected before the end of its ejection")
		}
		if e.Ejected(start.Add(10 * time.Second)) {
			t.Fatal("still ejected at the end of its ejection")
		}
		time.Sleep(10 * time.Second)
		if e.Ejected(time.Now()) {
			t.Fatal("still ejected 10s later")
		}
		e.Eject(time.Now().Add(time.Hour))
		e.Eject(time.Now().Add(-time.Second))
		if e.Ejected(time.Now()) {
			t.Fatal("an ejection ending in the past did not return the endpoint")
		}
	})
}

// TestEjectionHonoured: every picker skips ejected endpoints as it skips
// tried ones, falls back to the ejected, untried ones when nothing else is
// left, and returns an endpoint once its ejection ends.
func TestEjectionHonoured(t *testing.T) {
	tests := []struct {
		name    string
		ejected []int // indexes into a, b, c, d
		tried   []int
		want    []int // every one of these is picked, nothing else; none: ok=false
	}{
		{name: "none ejected", want: []int{0, 1, 2, 3}},
		{name: "one ejected", ejected: []int{1}, want: []int{0, 2, 3}},
		{name: "first ejected", ejected: []int{0}, want: []int{1, 2, 3}},
		{name: "three ejected", ejected: []int{0, 1, 3}, want: []int{2}},
		{name: "all ejected: fall back to all", ejected: []int{0, 1, 2, 3}, want: []int{0, 1, 2, 3}},
		{name: "ejected and tried cover all", ejected: []int{0, 1}, tried: []int{2, 3}, want: []int{0, 1}},
		{name: "ejected and tried, one left", ejected: []int{0}, tried: []int{2}, want: []int{1, 3}},
		{name: "all ejected, one tried", ejected: []int{0, 1, 2, 3}, tried: []int{3}, want: []int{0, 1, 2}},
		{name: "all ejected and tried", ejected: []int{0, 1, 2, 3}, tried: []int{0, 1, 2, 3}},
	}
	for _, tt := range tests {
		for _, policy := range Policies() {
			t.Run(tt.name+"/"+string(policy), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					eps := newEps("a", "b", "c", "d")
					var p Picker = newSeeded(policy, 3)
					var rs []*Request // nil: keyless requests
					if policy.Hashing() {
						// Built for eps and keyed: the ring or table's walk.
						p = mustPicker(t, Config{Policy: policy, Hash: HashKey{HashHeader, "x-user"}}, eps)
						rs = keyed(400)
					}
					for _, i := range tt.ejected {
						eps[i].Eject(time.Now().Add(time.Minute))
					}
					var tried []*Endpoint
					for _, i := range tt.tried {
						tried = append(tried, eps[i])
					}
					var want []*Endpoint
					for _, i := range tt.want {
						want = append(want, eps[i])
					}
					checkPicks(t, p, rs, eps, tried, want)
					// The ejections end: every untried endpoint is back.
					time.Sleep(time.Minute)
					var back []*Endpoint
					for _, e := range eps {
						if !slices.Contains(tried, e) {
							back = append(back, e)
						}
					}
					checkPicks(t, p, rs, eps, tried, back)
				})
			})
		}
	}
}

// checkPicks picks 400 times from eps, for the requests rs in turn (none:
// nil requests), and fails unless every pick is in want and every one of
// want is picked (want empty: every pick fails).
func checkPicks(t *testing.T, p Picker, rs []*Request, eps, tried, want []*Endpoint) {
	t.Helper()
	got := map[*Endpoint]int{}
	for i := range 400 {
		var r *Request
		if len(rs) > 0 {
			r = rs[i%len(rs)]
		}
		c, ok := p.Pick(r, eps, tried)
		if ok != (len(want) > 0) {
			t.Fatalf("ok = %v, want %v", ok, len(want) > 0)
		}
		if !ok {
			return
		}
		got[c.Endpoint()]++
		c.Done(Abandoned)
	}
	for e := range got {
		if !slices.Contains(want, e) {
			t.Fatalf("picked %s, want one of %v", e.Addr(), addrsOf(want))
		}
	}
	for _, e := range want {
		if got[e] == 0 {
			t.Fatalf("never picked %s, want each of %v", e.Addr(), addrsOf(want))
		}
	}
}

var (
	farFuture = time.Now().Add(100 * 365 * 24 * time.Hour)
	past      = time.Unix(0, 0)
)
