package config

import (
	"slices"
	"testing"
)

func TestServiceAccountsValidation(t *testing.T) {
	const at = "v.yaml: document 1 (Service default/web): "
	runValidation(t, []validationCase{
		{"accounts", service("", "{ports: [{port: 80}], serviceAccounts: [web, web-canary, batch.jobs]}"), nil},
		{"bad account", service("", "{ports: [{port: 80}], serviceAccounts: [Web]}"), []string{at + "spec.serviceAccounts[0]:"}},
		{"account with a slash", service("", "{ports: [{port: 80}], serviceAccounts: [ok, 'a/b']}"), []string{at + "spec.serviceAccounts[1]:"}},
		{"duplicate account", service("", "{ports: [{port: 80}], serviceAccounts: [a, b, a]}"), []string{at + `spec.serviceAccounts[2]: "a" is already listed at spec.serviceAccounts[0]`}},
		{"not a list", service("", "{ports: [{port: 80}], serviceAccounts: web}"), []string{"spec.serviceAccounts"}},
	})
}

// TestServiceAccountsDefault: without spec.serviceAccounts a Service runs
// as its selector's app (its own name unless it is a subset of another
// service's proxies), else its name.
func TestServiceAccountsDefault(t *testing.T) {
	for _, tt := range []struct {
		name, spec string
		want       []string
	}{
		{"own name", "{ports: [{port: 80}]}", []string{"web"}},
		{"subset of another service", "{selector: {app: shop, version: v1}, ports: [{port: 80}]}", []string{"shop"}},
		{"selector without app", "{selector: {tier: a}, ports: [{port: 80}]}", []string{"web"}},
		{"declared", "{selector: {app: shop}, ports: [{port: 80}], serviceAccounts: [x, z]}", []string{"x", "z"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Decode("v.yaml", []byte(service("", tt.spec)))
			if err != nil {
				t.Fatal(err)
			}
			if got := objs[0].(*Service).Accounts(); !slices.Equal(got, tt.want) {
				t.Fatalf("Accounts() = %v, want %v", got, tt.want)
			}
		})
	}
}
