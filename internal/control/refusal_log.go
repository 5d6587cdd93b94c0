package control

import (
	"bytes"
	"context"
	"log"
	"log/slog"

	"trellis.dev/trellis/internal/ratelog"
)

// serverErrorLog is the admin HTTPS server's ErrorLog: net/http reports a
// failed TLS handshake (a client that does not trust the control plane, a
// probe, a foreign client certificate) as one line per connection, which a
// scan would turn into a flood. Those lines go through the refusal log
// limiter at warn; net/http's other lines stay at debug.
func serverErrorLog(logger *slog.Logger, lim *ratelog.Limiter) *log.Logger {
	return log.New(errorLogWriter{log: logger, lim: lim}, "", 0)
}

type errorLogWriter struct {
	log *slog.Logger
	lim *ratelog.Limiter
}

func (w errorLogWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	if !bytes.Contains(p, []byte("TLS handshake error")) {
		w.log.Debug(line)
		return len(p), nil
	}
	if ok, n := w.lim.Allow("admin_tls_handshake"); ok {
		w.log.LogAttrs(context.Background(), slog.LevelWarn, "admin API TLS handshake refused",
			slog.String("detail", line), slog.Int64("suppressed", n))
	}
	return len(p), nil
}
