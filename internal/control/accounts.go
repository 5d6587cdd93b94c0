package control

import (
	"context"
	"fmt"
	"slices"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/store"
)

// serviceAccounts implements push.Accounts from the stored Services, read
// at Register (not from the view, which may lag an apply that just
// declared the account).
type serviceAccounts struct {
	st interface {
		List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	}
}

// AllowEndpoint admits ep under service account sa only if every Service
// that would take it allows sa: the Service it registers for (declared or
// not: an undeclared one allows its own name, the Service default), and
// every other Service of the namespace whose selector picks its labels.
func (s serviceAccounts) AllowEndpoint(ctx context.Context, ep *meshv1.Endpoint, sa string) error {
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
	for _, kv := range kvs {
		obj, err := config.DecodeStored("Service", kv.Value)
		if err != nil {
			continue
		}
		svc, ok := obj.(*config.Service)
		if !ok {
			continue
		}
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
