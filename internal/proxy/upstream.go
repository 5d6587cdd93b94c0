package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"trellis.dev/trellis/internal/telemetry"
)

// The transport edge: the stages at the end of each chain that build an
// outgoing *http.Request from the exchange, send it, and return the
// response (never writing it). Every attempt starts from a clean copy of
// the exchange's header, so nothing repairs headers between attempts.

// peerUpstream sends the exchange to the chosen endpoint's proxy over mTLS,
// naming the service port in X-Trellis-Port.
func (p *Proxy) peerUpstream() Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		if ex.Backend.svc.ext != nil {
			return p.egressUpstream(ex) // not a peer proxy: the outside
		}
		port := ex.Backend.port
		if port == 0 {
			port = ex.Port
		}
		ps := ex.Backend.svc.port(port)
		tr := ex.peer.h1
		if p.peerH2(ex) {
			tr = ex.peer.h2
		}
		// The listener edge stripped the app's mesh headers (stripApp):
		// only the receiving proxy says who the caller is.
		o := outHeader(ex, 2)
		o.header[headerPort] = ps.portHdr
		// Set, never passed on: the app behind this proxy cannot name
		// another caller.
		o.header[headerSource] = p.sourceHdr
		return roundTrip(ex, tr, "https", ex.peer.addr, o)
	})
}

// peerH2 reports whether the exchange rides the multiplexed HTTP/2
// transport to the peer (else one HTTP/1.1 connection of its own).
func (p *Proxy) peerH2(ex *Exchange) bool {
	port := ex.Backend.port
	if port == 0 {
		port = ex.Port
	}
	return ex.Backend.svc.port(port).h2() || ex.ProtoMajor == 2 || (p.hopH2 && ex.Upgrade == "")
}

// appUpstream sends a peer's exchange to the local app, telling it the
// caller's verified identity.
func (p *Proxy) appUpstream() Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		var tr http.RoundTripper = p.appH1
		if ex.target.h2() {
			tr = p.appH2C
		}
		o := outHeader(ex, 1)
		delete(o.header, headerPort)
		delete(o.header, headerSource) // read by metrics from ex.Header
		// Whatever the caller sent under the mesh's names (a plaintext
		// caller, a peer passing on a route's header) is not the mesh's
		// word: the app sees this proxy's headers only, and the identity
		// is set, never appended to.
		// (The identity header itself is replaced below, not stripped, so
		// the replacement is what keeps a forged one from the app.)
		if stripMeshHeaders(o.header, HeaderClientID) > 0 || len(o.header[HeaderClientID]) > 0 {
			p.refusals.Refused(telemetry.RefusedMeshHeader)
		}
		if ex.peerIDHdr != nil {
			o.header[HeaderClientID] = ex.peerIDHdr
		} else {
			delete(o.header, HeaderClientID) // plaintext: no identity
		}
		resp := roundTrip(ex, tr, "http", ex.target.appAddr, o)
		// roundTrip answers with &ex.resp only when the app answered (a
		// response or its 101); anything else is this proxy's own, whose
		// X-Trellis-Error must reach the caller. (ex.err is no test:
		// clientBodyFailed clears it for the proxy's own 400/408.)
		if resp == &ex.resp && resp.Header != nil {
			// Only proxies speak for the mesh: an app's X-Trellis-Error
			// must not pass for this proxy's (the caller retries on UF).
			if stripMeshHeaders(resp.Header, "") > 0 {
				p.refusals.Refused(telemetry.RefusedMeshHeader)
			}
		}
		return resp
	})
}

// outHeader is a clean copy of the exchange's header for one attempt:
// hop-by-hop headers removed, an upgrade re-requested, the caller appended
// to X-Forwarded-For. Value slices are shared with ex.Header, which no one
// changes once attempts begin; extra is room for the caller's own headers.
func outHeader(ex *Exchange, extra int) *outgoing {
	o := ex.lendOut(len(ex.Header) + extra + 1)
	h := o.header
	for k, vv := range ex.Header {
		h[k] = vv
	}
	removeHopHeaders(h)
	if ex.Upgrade != "" {
		h["Connection"] = connUpgrade
		h["Upgrade"] = []string{ex.Upgrade}
	}
	appendForwardedFor(h, ex.RemoteAddr)
	return o
}

var connUpgrade = []string{"Upgrade"}

// roundTrip sends one attempt and returns its response, or the proxy's own
// error response with the flag that says why.
func roundTrip(ex *Exchange, rt http.RoundTripper, scheme, addr string, o *outgoing) *Response {
	path := ex.Path
	if path == "" {
		path = "/"
	}
	o.url = url.URL{Scheme: scheme, Host: addr, Path: path, RawPath: ex.RawPath, RawQuery: ex.RawQuery}
	tmpl := http.Request{
		Method:        ex.Method,
		URL:           &o.url,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        o.header,
		ContentLength: ex.ContentLength,
		Host:          ex.Authority,
	}
	if ex.ContentLength != 0 {
		tmpl.Body = ex.Body
	}
	resp, err := sendAttempt(rt, tmpl.WithContext(ex.ctx), ex)
	if err != nil {
		if o == ex.out {
			ex.forgetOut()
		}
		ex.taintTimeouts()
		return attemptFailed(ex, addr, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return upgradeResponse(ex, resp)
	}
	removeHopHeaders(resp.Header)
	ex.resp = Response{
		Status:        resp.StatusCode,
		Header:        resp.Header,
		Body:          resp.Body,
		ContentLength: resp.ContentLength,
		Trailer:       &resp.Trailer,
	}
	return &ex.resp
}

// sendAttempt round-trips req on rt; an HTTP/1.1 transport also tells the
// exchange how long a connection it had to make took (NoteDial).
func sendAttempt(rt http.RoundTripper, req *http.Request, ex *Exchange) (*http.Response, error) {
	if nt, ok := rt.(dialNoting); ok {
		return nt.RoundTripNoting(req, ex)
	}
	return rt.RoundTrip(req)
}

// attemptFailed turns a transport error into the exchange's answer.
func attemptFailed(ex *Exchange, addr string, err error) *Response {
	ex.err = err
	switch {
	case ex.reqBody.failed() != bodyOK:
		return clientBodyFailed(ex)
	case ex.clientCtx.Err() != nil && ex.reqBody.stalledBy(time.Now()):
		return clientBodyFailed(ex)
	case ex.clientCtx.Err() != nil:
		// Nobody is listening; the status is only recorded.
		return ex.fail(statusClientClosed, FlagDC, "client went away")
	case ex.ctx.Err() != nil:
		return ex.fail(http.StatusGatewayTimeout, FlagUT, "upstream "+addr+" did not answer within the route's timeout")
	case connectFailed(err):
		return ex.fail(http.StatusBadGateway, FlagUF, "upstream "+addr+" failed: cannot connect")
	}
	return ex.fail(http.StatusBadGateway, FlagUR, "upstream "+addr+" failed")
}

// connectFailed reports whether err happened before a request could be
// sent: dialing, the TLS handshake, or the peer's identity check.
func connectFailed(err error) bool {
	var de *DialError
	var op *net.OpError
	var cv *tls.CertificateVerificationError
	var alert tls.AlertError
	var rh tls.RecordHeaderError
	return errors.As(err, &de) || errors.Is(err, errPeerIdentity) || errors.Is(err, errPeerRefused) ||
		(errors.As(err, &op) && op.Op == "dial") ||
		errors.As(err, &cv) || errors.As(err, &alert) || errors.As(err, &rh)
}

// upgradeResponse checks a 101 Switching Protocols answers the upgrade the
// client asked for, and hands the upstream stream to the writer.
func upgradeResponse(ex *Exchange, resp *http.Response) *Response {
	back, ok := resp.Body.(interface {
		Read([]byte) (int, error)
		Write([]byte) (int, error)
		Close() error
	})
	got := upgradeType(resp.Header)
	if !ok || ex.Upgrade == "" || !strings.EqualFold(got, ex.Upgrade) {
		resp.Body.Close()
		ex.err = errors.New("proxy: unexpected 101")
		return ex.fail(http.StatusBadGateway, FlagUR, "upstream switched protocols unasked")
	}
	removeHopHeaders(resp.Header)
	resp.Header["Connection"] = connUpgrade
	resp.Header["Upgrade"] = []string{got}
	ex.resp = Response{Status: http.StatusSwitchingProtocols, Header: resp.Header, Upgraded: back}
	return &ex.resp
}
