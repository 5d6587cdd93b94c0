package tap

import (
	"errors"
	"fmt"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/echo"
	"trellis.dev/trellis/internal/meshname"
)

// Bounds of a tap's filter and rate.
const (
	// DefaultMaxRPS is a tap's rate bound per proxy when the request
	// names none.
	DefaultMaxRPS = 100
	// MaxMaxRPS bounds what a request may ask for: a tap is for looking
	// at traffic, not for copying it.
	MaxMaxRPS = 1000
	maxPath   = 1024
)

// ErrInvalid is wrapped by every error of a bad tap request.
var ErrInvalid = errors.New("tap: invalid request")

// Filter says which requests a tap wants. The zero value matches all.
type Filter struct {
	// PathPrefix matches paths that start with it ("" any).
	PathPrefix string
	// Method is upper-case ("" any).
	Method string
	// To is a destination service, name.namespace ("" any).
	To string
}

// FilterOf checks a TapRequest's filter and returns it, with the method
// upper-cased so matching needs no case folding.
func FilterOf(r *meshv1.TapRequest) (Filter, error) {
	f := Filter{PathPrefix: r.GetPathPrefix(), Method: strings.ToUpper(r.GetMethod()), To: r.GetTo()}
	switch {
	case f.PathPrefix != "" && !strings.HasPrefix(f.PathPrefix, "/"):
		return Filter{}, fmt.Errorf("%w: path_prefix %s must start with /", ErrInvalid, echo.Quote(f.PathPrefix))
	case len(f.PathPrefix) > maxPath:
		return Filter{}, fmt.Errorf("%w: path_prefix is %d bytes, over %d", ErrInvalid, len(f.PathPrefix), maxPath)
	case f.Method != "" && !isToken(f.Method):
		return Filter{}, fmt.Errorf("%w: method %s is not an HTTP method token", ErrInvalid, echo.Quote(f.Method))
	case f.To != "" && !meshname.IsQualified(f.To):
		return Filter{}, fmt.Errorf("%w: to %s: want a service as name.namespace", ErrInvalid, echo.Quote(f.To))
	}
	return f, nil
}

// MatchRequest reports whether a request's method and path pass the
// filter; the destination is checked when known (MatchTo).
func (f *Filter) MatchRequest(method, path string) bool {
	if f.Method != "" && f.Method != method {
		return false
	}
	return strings.HasPrefix(path, f.PathPrefix)
}

// MatchTo reports whether the destination service (name.namespace) passes.
func (f *Filter) MatchTo(dest string) bool { return f.To == "" || f.To == dest }

// isToken reports whether s is an RFC 9110 token of at most 32 bytes.
func isToken(s string) bool {
	if len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
