package push

// refused counts a refused call and logs it through the server's refusal
// log limiter (internal/ratelog): a burst, a few lines a second per rpc and
// reason, and a summary of the rest, so a flood of bad tokens cannot flood
// the log; the counter counts every one.
func (s *Server) refused(rpc, reason, msg string, args ...any) {
	s.o.Refusals.Refused(rpc, reason)
	if ok, n := s.refusalLog.Allow(rpc + "/" + reason); ok {
		s.log.Warn(msg, append(args, "rpc", rpc, "reason", reason, "suppressed", n)...)
	}
}
