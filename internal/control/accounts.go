package control

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/store"
)

// serviceAccounts implements push.Accounts from the stored Services, read
// at Register (not from the view, which may lag an apply that just
// declared the account). Decoded Services are cached by key and
// ModRevision (a stored value never changes under one revision): the scale
// harness showed decoding every Service of the namespace on every Register
// was three quarters of the control plane's CPU while 300 proxies joined.
type serviceAccounts struct {
	st interface {
		List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	}
	mu sync.Mutex
	// byNS[namespace][store key]; entries of deleted Services are dropped
	// when the namespace's cache outgrows its listing.
	byNS map[string]map[string]decodedService
}

type decodedService struct {
	mod int64
	svc *config.Service // nil: the stored value is not a valid Service
}

func newServiceAccounts(st interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
}) *serviceAccounts {
	return &serviceAccounts{st: st, byNS: map[string]map[string]decodedService{}}
}

// services decodes the listed Services of ns, reusing cached decodes of
// unchanged ones. The results are shared and never modified.
func (s *serviceAccounts) services(ns string, kvs []store.KV) []*config.Service {
	out := make([]*config.Service, 0, len(kvs))
	s.mu.Lock()
	cache := s.byNS[ns]
	if cache == nil || len(cache) > 2*len(kvs)+16 {
		cache = make(map[string]decodedService, len(kvs))
		s.byNS[ns] = cache
	}
	var miss []store.KV
	for _, kv := range kvs {
		if d, ok := cache[kv.Key]; ok && d.mod == kv.ModRevision {
			if d.svc != nil {
				out = append(out, d.svc)
			}
			continue
		}
		miss = append(miss, kv)
	}
	s.mu.Unlock()
	for _, kv := range miss {
		var svc *config.Service
		if obj, err := config.DecodeStored("Service", kv.Value); err == nil {
			svc, _ = obj.(*config.Service)
		}
		s.mu.Lock()
		s.byNS[ns][kv.Key] = decodedService{mod: kv.ModRevision, svc: svc}
		s.mu.Unlock()
		if svc != nil {
			out = append(out, svc)
		}
	}
	return out
}

// AllowEndpoint admits ep under service account sa only if every Service
// that would take it allows sa: the Service it registers for (declared or
// not: an undeclared one allows its own name, the Service default), and
// every other Service of the namespace whose selector picks its labels.
func (s *serviceAccounts) AllowEndpoint(ctx context.Context, ep *meshv1.Endpoint, sa string) error {
	kvs, _, err := s.st.List(ctx, config.KindPrefix("Service")+ep.GetNamespace()+"/")
	if err != nil {
		return fmt.Errorf("service accounts: %w", err)
	}
	labels := map[string]string{}
	for k, v := range ep.GetLabels() {
		labels[k] = v
	}
	labels["app"] = ep.GetService() // as the registry stores it
	own := false
	for _, svc := range s.services(ep.GetNamespace(), kvs) {
		if svc.Name == ep.GetService() {
			own = true
		} else if !selects(svc.Spec.Selector, labels) {
			continue
		}
		if !slices.Contains(svc.Accounts(), sa) {
			return notAllowed(svc.Namespace, svc.Name, sa, svc.Accounts())
		}
	}
	if !own && sa != ep.GetService() {
		return notAllowed(ep.GetNamespace(), ep.GetService(), sa, []string{ep.GetService()})
	}
	return nil
}

func notAllowed(ns, svc, sa string, accounts []string) error {
	return fmt.Errorf("%w: Service %s/%s runs as service account(s) %s, not %q; run the proxy with one of them (--service-account) or add it to the Service's spec.serviceAccounts",
		push.ErrAccountNotAllowed, ns, svc, strings.Join(accounts, ", "), sa)
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
