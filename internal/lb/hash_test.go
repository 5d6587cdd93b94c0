package lb

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestCookieValue(t *testing.T) {
	tests := []struct {
		name   string
		lines  []string
		cookie string
		want   string
		ok     bool
	}{
		{"only", []string{"session=abc"}, "session", "abc", true},
		{"among others", []string{"a=1; session=abc; b=2"}, "session", "abc", true},
		{"no spaces", []string{"a=1;session=abc;b=2"}, "session", "abc", true},
		{"space before the equals", []string{"session =abc; b=2"}, "session", "abc", true},
		{"last", []string{"a=1; session=abc"}, "session", "abc", true},
		{"quoted", []string{`session="abc"`}, "session", "abc", true},
		{"empty value", []string{"session=; a=1"}, "session", "", true},
		{"second line", []string{"a=1", "session=abc"}, "session", "abc", true},
		{"first of two", []string{"session=abc; session=def"}, "session", "abc", true},
		{"prefix of another name", []string{"session_id=abc"}, "session", "", false},
		{"name as a value", []string{"a=session"}, "session", "", false},
		{"no equals", []string{"session"}, "session", "", true},
		{"absent", []string{"a=1"}, "session", "", false},
		{"no header", nil, "session", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := cookieValue(tt.lines, tt.cookie)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("cookieValue(%q, %q) = %q, %v; want %q, %v", tt.lines, tt.cookie, got, ok, tt.want, tt.ok)
			}
			// net/http's parser agrees.
			r := http.Request{Header: http.Header{"Cookie": tt.lines}}
			c, err := r.Cookie(tt.cookie)
			if (err == nil) != tt.ok || (err == nil && c.Value != tt.want) {
				t.Fatalf("net/http reads %v, %v; want %q, %v", c, err, tt.want, tt.ok)
			}
		})
	}
}

// TestQueryHash: a parameter hashes as its unescaped value, the same as
// hashString of what url.ParseQuery reads, however it is escaped.
func TestQueryHash(t *testing.T) {
	tests := []struct {
		raw, name string
		ok        bool
	}{
		{"user=alice", "user", true},
		{"a=1&user=alice&b=2", "user", true},
		{"user=al%20ice", "user", true},
		{"user=al+ice", "user", true},
		{"us%65r=alice", "user", true},
		{"user=%zz", "user", true},
		{"user=a%2", "user", true},
		{"user=", "user", true},
		{"user", "user", true},
		{"user=one&user=two", "user", true},
		{"my+name=x", "my name", true},
		{"username=alice", "user", false},
		{"a=user", "user", false},
		{"", "user", false},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			got, ok := queryHash(tt.raw, tt.name)
			if ok != tt.ok {
				t.Fatalf("queryHash(%q, %q) ok = %v, want %v", tt.raw, tt.name, ok, tt.ok)
			}
			if !ok {
				return
			}
			want := hashString(firstValue(tt.raw, tt.name))
			if got != want {
				t.Fatalf("queryHash(%q, %q) = %x, want the hash of %q, %x", tt.raw, tt.name, got, firstValue(tt.raw, tt.name), want)
			}
		})
	}
}

// firstValue is what net/url reads as name's first value in raw, malformed
// escapes left as they are.
func firstValue(raw, name string) string {
	if q, err := url.ParseQuery(raw); err == nil {
		return q.Get(name)
	}
	// ParseQuery refuses a bad escape; unescapeAt keeps it literally.
	switch raw {
	case "user=%zz":
		return "%zz"
	case "user=a%2":
		return "a%2"
	}
	panic("unexpected query " + raw)
}

// TestHashStreaming: hashing byte by byte and a string at once agree, for
// every split of the input (the query path relies on it).
func TestHashStreaming(t *testing.T) {
	s := "spiffe://trellis.local/ns/default/sa/web-frontend"
	want := hashString(s)
	for cut := range len(s) + 1 {
		h := newHasher()
		for i := range cut {
			h.add(s[i])
		}
		h.addString(s[cut:])
		if h.sum() != want {
			t.Fatalf("split at %d: %x, want %x", cut, h.sum(), want)
		}
	}
	if hashString("ab") == hashString("ab\x00") || hashString("") == hashString("\x00") {
		t.Fatal("trailing zero bytes do not change the hash")
	}
}

// TestHashKinds: each kind hashes its own part of the request.
func TestHashKinds(t *testing.T) {
	r := hashedReq()
	tests := []struct {
		key  HashKey
		want string
	}{
		{HashKey{HashHeader, "x-user"}, "alice"},
		{HashKey{HashHeader, "X-USER"}, "alice"},
		{HashKey{HashCookie, "session"}, "abc123"},
		{HashKey{HashQuery, "user"}, "al ice"},
		{HashKey{HashSource, ""}, r.Source},
	}
	for _, tt := range tests {
		k := newKeyer(tt.key)
		got, ok := k.hash(r)
		if !ok || got != hashString(tt.want) {
			t.Errorf("%+v: hash %x, %v; want the hash of %q", tt.key, got, ok, tt.want)
		}
	}
	k := newKeyer(HashKey{})
	if _, ok := k.hash(r); ok {
		t.Error("HashNone found a key")
	}
}

func FuzzQueryHash(f *testing.F) {
	f.Add("a=1&user=al%20ice", "user")
	f.Add("user=%zz&user=2", "user")
	f.Add("%", "%")
	f.Fuzz(func(t *testing.T, raw, name string) {
		h1, ok1 := queryHash(raw, name)
		h2, ok2 := queryHash(raw, name)
		if h1 != h2 || ok1 != ok2 {
			t.Fatal("not deterministic")
		}
		if q, err := url.ParseQuery(raw); err == nil && len(q[name]) > 0 {
			if !ok1 || h1 != hashString(q[name][0]) {
				t.Fatalf("queryHash(%q, %q) disagrees with url.ParseQuery's %q", raw, name, q[name][0])
			}
		}
	})
}

func FuzzCookieValue(f *testing.F) {
	f.Add("a=1; session=\"abc\"; b=2", "session")
	f.Add(";;=;", "")
	f.Fuzz(func(t *testing.T, line, name string) {
		v, ok := cookieValue([]string{line}, name)
		if !ok {
			if v != "" {
				t.Fatalf("not found, yet value %q", v)
			}
			return
		}
		if !strings.Contains(line, name+"=") && !strings.Contains(line, name) {
			t.Fatalf("found %q in %q, which does not name it", name, line)
		}
		if !strings.Contains(line, v) {
			t.Fatalf("value %q is not part of %q", v, line)
		}
		// Well-formed lines read as net/http reads them.
		r := http.Request{Header: http.Header{"Cookie": {line}}}
		if len(r.Cookies()) == strings.Count(line, ";")+1 {
			if c, err := r.Cookie(name); err == nil && c.Value != v {
				t.Fatalf("cookieValue(%q, %q) = %q; net/http reads %q", line, name, v, c.Value)
			}
		}
	})
}
