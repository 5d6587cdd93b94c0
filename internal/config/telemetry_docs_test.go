package config

import (
	"regexp"
	"strings"
	"testing"

	"trellis.dev/trellis/internal/accesslog"
)

// TestAccessLogFieldsDocumented: every access log field the proxy writes
// has a row in the Telemetry section's "Access log lines" table.
func TestAccessLogFieldsDocumented(t *testing.T) {
	_, lines, ok := strings.Cut(docSection(t, "Telemetry"), "\n### Access log lines\n")
	if !ok {
		t.Fatal("no Access log lines section")
	}
	e := accesslog.Entry{GRPCStatus: "0"}
	line := string(accesslog.AppendJSON(nil, &e))
	for _, m := range regexp.MustCompile(`"([a-z_]+)":`).FindAllStringSubmatch(line, -1) {
		if !strings.Contains(lines, "| `"+m[1]+"` |") {
			t.Errorf("access log field %s is not documented", m[1])
		}
	}
}
