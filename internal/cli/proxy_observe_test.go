package cli

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/sidecar"
)

// TestObserveFlags: the tracing and access log flags reach the sidecar's
// options, a sampling flag given is fixed (wins over Telemetry), one left
// out is not, and bad values are refused naming the flag.
func TestObserveFlags(t *testing.T) {
	parse := func(args ...string) (sidecar.Options, error) {
		var f observeFlags
		cmd := &cobra.Command{}
		f.register(cmd.Flags())
		if err := cmd.Flags().Parse(args); err != nil {
			return sidecar.Options{}, err
		}
		var o sidecar.Options
		return o, f.apply(cmd, &o)
	}
	o, err := parse("--trace-endpoint", "http://127.0.0.1:4317", "--access-log", "/tmp/a.log", "--access-log-max-size", "64KiB")
	if err != nil {
		t.Fatal(err)
	}
	if o.Tracing == nil || o.Tracing.Endpoint != "http://127.0.0.1:4317" || o.Tracing.Protocol != "grpc" || o.Tracing.SamplingPercent != 1 || o.SamplingFixed {
		t.Errorf("tracing %+v fixed %v", o.Tracing, o.SamplingFixed)
	}
	if o.AccessLog != "/tmp/a.log" || o.AccessLogMaxBytes != 64<<10 || o.AccessLogMaxFiles != 3 || o.AccessLogBuffer != 4096 {
		t.Errorf("access log %q %d %d %d", o.AccessLog, o.AccessLogMaxBytes, o.AccessLogMaxFiles, o.AccessLogBuffer)
	}
	if o, _ = parse("--trace-endpoint", "http://c:4318", "--trace-protocol", "http", "--trace-sampling", "0"); !o.SamplingFixed || o.Tracing.SamplingPercent != 0 {
		t.Errorf("--trace-sampling 0 given: fixed %v, %v", o.SamplingFixed, o.Tracing)
	}
	if o, _ = parse(); o.Tracing != nil {
		t.Errorf("no --trace-endpoint, yet tracing %+v", o.Tracing)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--trace-sampling", "101"}, "--trace-sampling"},
		{[]string{"--trace-endpoint", "http://c:1", "--trace-protocol", "thrift"}, "--trace-protocol"},
		{[]string{"--access-log-max-size", "100"}, "--access-log-max-size"},
		{[]string{"--access-log-buffer", "0"}, "--access-log-buffer"},
	} {
		if _, err := parse(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
}
