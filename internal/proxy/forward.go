package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
)

// Headers the proxy owns between hops.
const (
	// HeaderClientID carries the caller's verified SPIFFE ID to the app.
	HeaderClientID = "X-Trellis-Client-Id"
	// headerPort names the destination service port between proxies.
	headerPort = "X-Trellis-Port"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// hopHeaders are dropped at every hop (RFC 9110 §7.6.1, plus the de-facto
// Keep-Alive and Proxy-Connection). TE is handled separately.
var hopHeaders = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Trailer", "Transfer-Encoding", "Upgrade",
}

// upgradeType returns the protocol a request or response asks to switch
// to ("websocket"), or "" when it is not an upgrade.
func upgradeType(h http.Header) string {
	up := h["Upgrade"]
	if len(up) == 0 {
		return ""
	}
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return up[0]
			}
		}
	}
	return ""
}

// removeHopHeaders strips hop-by-hop headers in place, including those the
// Connection header names; TE survives only as "trailers".
func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				delete(h, http.CanonicalHeaderKey(tok))
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
	if te, ok := h["Te"]; ok {
		keep := false
		for _, v := range te {
			for tok := range strings.SplitSeq(v, ",") {
				if strings.EqualFold(strings.TrimSpace(tok), "trailers") {
					keep = true
				}
			}
		}
		if keep {
			h["Te"] = teTrailers
		} else {
			delete(h, "Te")
		}
	}
}

var teTrailers = []string{"trailers"}

func appendForwardedFor(h http.Header, remoteAddr string) {
	ip, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return
	}
	if prior := h["X-Forwarded-For"]; len(prior) > 0 {
		h["X-Forwarded-For"] = []string{strings.Join(prior, ", ") + ", " + ip}
		return
	}
	h["X-Forwarded-For"] = []string{ip}
}

// httpError writes a proxy-generated error; the body says who refused and why.
func httpError(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h["Content-Type"] = textPlain
	h["X-Content-Type-Options"] = nosniff
	h["X-Trellis-Error"] = one
	w.WriteHeader(code)
	_, _ = io.WriteString(w, "trellis proxy: "+msg+"\n")
}

var (
	textPlain = []string{"text/plain; charset=utf-8"}
	nosniff   = []string{"nosniff"}
	one       = []string{"1"}
)

// errAborted marks a response that failed after its header was sent; the
// caller records it and aborts the client's stream.
var errAborted = errors.New("proxy: response aborted mid-body")

// forward sends r to scheme://addr over rt and copies the response to w.
// It returns the status code written (or the one it would have recorded)
// and the upstream error, if any. r.Header is modified in place. With
// retryable set, a failure to connect writes nothing and returns code 0 so
// the caller can try another endpoint.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, rt http.RoundTripper, scheme, addr string, retryable bool) (int, error) {
	upgrade := ""
	if r.ProtoMajor == 1 {
		upgrade = upgradeType(r.Header)
	}
	removeHopHeaders(r.Header)
	if upgrade != "" {
		r.Header["Connection"] = connUpgrade
		r.Header["Upgrade"] = []string{upgrade}
	}
	appendForwardedFor(r.Header, r.RemoteAddr)

	out := r.WithContext(r.Context())
	u := *r.URL
	u.Scheme, u.Host, u.User = scheme, addr, nil
	if u.Path == "" && u.Opaque == "" {
		u.Path = "/"
	}
	out.URL = &u
	out.RequestURI = ""
	out.Close = false
	out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	if r.ContentLength == 0 {
		out.Body = nil
	} else {
		// The transport may still read the body after the response arrives;
		// closing it here keeps it from outliving the handler.
		defer out.Body.Close()
	}

	resp, err := rt.RoundTrip(out)
	if err != nil {
		if r.Context().Err() != nil {
			return 499, err // the client went away; nothing to write
		}
		var de *DialError
		if retryable && errors.As(err, &de) {
			return 0, err
		}
		httpError(w, http.StatusBadGateway, "upstream "+addr+" failed")
		return http.StatusBadGateway, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return p.upgraded(w, resp, upgrade)
	}
	defer resp.Body.Close()

	removeHopHeaders(resp.Header)
	dst := w.Header()
	for k, vv := range resp.Header {
		dst[k] = vv
	}
	streaming := resp.ContentLength == -1
	w.WriteHeader(resp.StatusCode)
	if streaming {
		// gRPC and event streams: headers go out now, each chunk as it comes.
		_ = http.NewResponseController(w).Flush()
	}
	if err := copyBody(w, resp.Body, streaming); err != nil {
		return resp.StatusCode, errors.Join(errAborted, err)
	}
	for k, vv := range resp.Trailer {
		dst[http.TrailerPrefix+k] = vv
	}
	return resp.StatusCode, nil
}

var connUpgrade = []string{"Upgrade"}

func copyBody(w http.ResponseWriter, body io.Reader, flush bool) error {
	bp := getBuf()
	defer putBuf(bp)
	buf := *bp
	var fl http.Flusher
	if flush {
		fl, _ = w.(http.Flusher)
	}
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// upgraded completes a 101 Switching Protocols: the client's connection is
// taken over and spliced to the upstream's.
func (p *Proxy) upgraded(w http.ResponseWriter, resp *http.Response, asked string) (int, error) {
	back, ok := resp.Body.(io.ReadWriteCloser)
	got := upgradeType(resp.Header)
	if !ok || asked == "" || !strings.EqualFold(got, asked) {
		resp.Body.Close()
		httpError(w, http.StatusBadGateway, "upstream switched protocols unasked")
		return http.StatusBadGateway, errors.New("proxy: unexpected 101")
	}
	defer back.Close()
	client, cbuf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		httpError(w, http.StatusInternalServerError, "cannot take over the connection")
		return http.StatusInternalServerError, err
	}
	defer client.Close()
	removeHopHeaders(resp.Header)
	resp.Header["Connection"] = connUpgrade
	resp.Header["Upgrade"] = []string{got}
	_, _ = cbuf.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	_ = resp.Header.Write(cbuf)
	_, _ = cbuf.WriteString("\r\n")
	if err := cbuf.Flush(); err != nil {
		return http.StatusSwitchingProtocols, err
	}
	if !p.track(client, true) {
		return http.StatusSwitchingProtocols, nil
	}
	defer p.track(client, false)
	splice(cbuf.Reader, client, back, back)
	return http.StatusSwitchingProtocols, nil
}
