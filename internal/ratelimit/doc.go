// Package ratelimit holds the rate limiters a proxy enforces: a token
// bucket (bursts up to a capacity, refilled at a rate) and a leaky bucket
// (requests delayed to evenly spaced slots through a bounded queue, the
// overflow refused), keyed sets of either for per-identity and per-header
// scopes, and the rate a replica holds of a global limit.
//
// Every decision takes the time as an argument, in nanoseconds on a
// monotonic clock the caller owns (the proxy reads it once per request;
// tests drive it by hand or under testing/synctest). A decision takes one
// uncontended mutex, does no allocation and no clock read.
package ratelimit
