package cli

import (
	"fmt"
	"slices"
	"strings"

	"trellis.dev/trellis/internal/control"
	"trellis.dev/trellis/internal/push"
)

// replicaList is GET /v1/replicas.
type replicaList struct {
	Self     string            `json:"self"`
	Replicas []control.Replica `json:"replicas"`
}

// checkReplicas: one leader among the replicas, the proxies each has, a
// replica with none (a warning: a spare, or proxies not given its
// address), and proxies attached to a replica no longer running.
func checkReplicas(reps []control.Replica, proxies []push.ProxyStatus) []checkLine {
	if len(reps) == 0 {
		return []checkLine{fail("the replicas could not stand for election: see their logs (is etcd reachable?)", "no replica is running the leader election")}
	}
	per := map[string]int{}
	var orphans []string
	known := map[string]bool{}
	for _, r := range reps {
		known[r.ID] = true
	}
	for _, p := range proxies {
		per[p.Replica]++
		if p.Replica != "" && !known[p.Replica] {
			orphans = append(orphans, fmt.Sprintf("%s (%s)", p.NodeID, p.Replica))
		}
	}
	var lines []checkLine
	leader := slices.IndexFunc(reps, func(r control.Replica) bool { return r.Leader })
	if leader < 0 {
		lines = append(lines, fail("an election is under way, or etcd is unreachable; run 'trellis check' again, and see the replicas' logs if it persists",
			"%s, none of them the leader", replicaCount(len(reps))))
	} else {
		lines = append(lines, pass("%s, %s the leader", replicaCount(len(reps)), reps[leader].ID))
	}
	counts := make([]string, len(reps))
	var idle []string
	for i, r := range reps {
		counts[i] = fmt.Sprintf("%s %d", r.ID, per[r.ID])
		if per[r.ID] == 0 {
			idle = append(idle, r.ID)
		}
	}
	lines = append(lines, pass("proxies per replica: %s", strings.Join(counts, ", ")))
	if len(idle) > 0 && len(reps) > 1 {
		lines = append(lines, checkLine{ok: true, warn: true,
			what: fmt.Sprintf("%d of %d replicas serve no proxy: %s", len(idle), len(reps), strings.Join(idle, ", ")),
			next: "a replica a proxy is not given the address of never serves it: give proxies every replica's address (--control a:1,b:2,c:3); a replica just started or restarted fills as proxies reconnect"})
	}
	if len(orphans) > 0 {
		lines = append(lines, fail("their replica stopped; they re-attach to another within seconds. If this persists, check that their --control lists the running replicas",
			"%s attached to a replica that is not running: %s", proxiesAre(len(orphans)), strings.Join(orphans, ", ")))
	}
	return lines
}

// replicaCount is "1 replica" or "3 replicas".
func replicaCount(n int) string {
	if n == 1 {
		return "1 replica"
	}
	return fmt.Sprintf("%d replicas", n)
}

// proxiesAre is "1 proxy is" or "2 proxies are".
func proxiesAre(n int) string {
	if n == 1 {
		return "1 proxy is"
	}
	return fmt.Sprintf("%d proxies are", n)
}
