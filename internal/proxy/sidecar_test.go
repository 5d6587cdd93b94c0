package proxy

import "testing"

func TestQualify(t *testing.T) {
	tests := []struct{ in, want string }{
		{"orders", "orders.default"},
		{"orders.shop", "orders.shop"},
		{"orders:82", "orders.default"},
		{"orders.shop:82", "orders.shop"},
	}
	for _, tt := range tests {
		if got := qualify(tt.in, "default"); got != tt.want {
			t.Errorf("qualify(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}
