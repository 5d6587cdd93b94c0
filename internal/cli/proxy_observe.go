package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"trellis.dev/trellis/internal/accesslog"
	"trellis.dev/trellis/internal/sidecar"
	"trellis.dev/trellis/internal/tracing"
)

// observeFlags are trellis proxy's tracing and access log flags. A flag
// given wins over the mesh's Telemetry resource; one not given leaves the
// decision to it.
type observeFlags struct {
	traceEndpoint, traceProtocol string
	sampling                     float64
	accessLog                    string
	maxSize                      string
	maxFiles, buffer             int
}

func (f *observeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.traceEndpoint, "trace-endpoint", "", "OTLP collector spans are exported to, http://host:port (plain) or https://host:port; empty: no tracing")
	fs.StringVar(&f.traceProtocol, "trace-protocol", tracing.ProtocolGRPC, "OTLP protocol: grpc (port 4317 by convention) or http (4318; path /v1/traces unless the URL names one)")
	fs.Float64Var(&f.sampling, "trace-sampling", tracing.DefaultSamplingPercent, "percent of new traces sampled, 0-100 (a request with a sampled parent is always traced); given, it wins over the mesh's Telemetry")
	fs.StringVar(&f.accessLog, "access-log", "", "access logs: off, stdout, or a file path (JSON lines); given, it wins over the mesh's Telemetry; empty: as the Telemetry says, to stdout")
	fs.StringVar(&f.maxSize, "access-log-max-size", "100MiB", "size an access log file grows to before it is rotated to FILE.1 (KiB, MiB, GiB)")
	fs.IntVar(&f.maxFiles, "access-log-max-files", 3, "rotated access log files kept (FILE.1 … FILE.N)")
	fs.IntVar(&f.buffer, "access-log-buffer", accesslog.DefaultQueue, "access log lines that may wait for the sink; beyond, lines are dropped (and counted), never the request delayed")
}

// apply checks the flags and sets them on o.
func (f *observeFlags) apply(cmd *cobra.Command, o *sidecar.Options) error {
	if err := tracing.ValidSamplingPercent(f.sampling); err != nil {
		return fmt.Errorf("proxy: --trace-sampling: %w", err)
	}
	if f.traceEndpoint != "" {
		if f.traceProtocol != tracing.ProtocolGRPC && f.traceProtocol != tracing.ProtocolHTTP {
			return fmt.Errorf("proxy: --trace-protocol %q: want grpc or http", f.traceProtocol)
		}
		o.Tracing = &tracing.Config{Endpoint: f.traceEndpoint, Protocol: f.traceProtocol, SamplingPercent: f.sampling}
		o.SamplingFixed = cmd.Flags().Changed("trace-sampling")
	}
	maxBytes, err := accesslog.ParseSize(f.maxSize)
	if err != nil {
		return fmt.Errorf("proxy: --access-log-max-size: %w", err)
	}
	if f.maxFiles <= 0 || f.buffer <= 0 {
		return fmt.Errorf("proxy: --access-log-max-files and --access-log-buffer must be > 0")
	}
	o.AccessLog, o.AccessLogMaxBytes, o.AccessLogMaxFiles, o.AccessLogBuffer = f.accessLog, maxBytes, f.maxFiles, f.buffer
	return nil
}
