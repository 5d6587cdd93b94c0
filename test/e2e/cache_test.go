package e2e

// The tests build and run the trellis binary in a subprocess, which go
// test's result cache cannot see: without this import a change to the
// mesh's code would leave a cached PASS in place. Linking the command's
// code into the test binary makes every such change invalidate the cache.
import _ "trellis.dev/trellis/internal/cli"
