// Package resilience holds the algorithms behind the proxy's retry, circuit
// breaker and outlier detection filters: a retry budget (Linkerd's), the
// exponential backoff with full jitter between attempts, a per-backend
// circuit breaker (Envoy's three limits), and passive outlier detection
// (Envoy's consecutive-errors ejection). Nothing here knows HTTP or the
// proxy's types: the proxy tells each piece what happened and acts on what
// it answers. Every piece reads the clock through time.Now, so tests run
// them under testing/synctest.
package resilience
