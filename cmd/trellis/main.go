// Command trellis is the Trellis service mesh: control plane, sidecar proxy
// and the CLI that operates both.
package main

import (
	"os"

	"trellis.dev/trellis/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
