// Package tap holds `trellis tap`'s moving parts that are not the proxy's
// request path: the filter a tap matches requests with and the sampler
// that bounds its rate (filter.go, sampler.go), the proxy's set of running
// taps (taps.go) and its side of the Tap stream (client.go), and the
// control plane's hub that relays a CLI's tap to the proxies of a service
// and their events back (hub.go).
//
// Nothing is recorded while no one taps: the proxy's filter loads one
// pointer (Taps.Load) and finds it nil.
package tap
