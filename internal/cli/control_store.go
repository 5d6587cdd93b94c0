package cli

import (
	"fmt"

	"github.com/spf13/pflag"

	"trellis.dev/trellis/internal/control"
)

// storeFlags choose the control plane's store: the bbolt file in the data
// dir (the default, nothing else to run) or etcd, which several replicas
// can share.
type storeFlags struct {
	backend                   string
	endpoints                 []string
	prefix, ca, cert, keyFile string
	// caSeal is the key file sealing the CA's key in the store: with
	// replicas on etcd the store is shared, so the key should not sit in
	// it readable.
	caSeal string
}

// defaultEtcdPrefix keeps Trellis's keys apart from anything else in etcd;
// give each mesh its own to share one cluster.
const defaultEtcdPrefix = "/trellis"

func (s *storeFlags) register(f *pflag.FlagSet) {
	f.StringVar(&s.backend, "store", "bolt", "store backend: bolt (a file in --data-dir) or etcd (see --etcd-endpoints)")
	f.StringSliceVar(&s.endpoints, "etcd-endpoints", nil, "etcd client URLs, comma-separated (http://host:2379 or https://...); needs --store etcd")
	f.StringVar(&s.prefix, "etcd-prefix", defaultEtcdPrefix, "prefix of every Trellis key in etcd (/trellis: /trellis/resources/...); one per mesh sharing an etcd, none the start of another")
	f.StringVar(&s.ca, "etcd-ca", "", "PEM CA that signed the etcd servers' certificates (default: system roots; https endpoints)")
	f.StringVar(&s.cert, "etcd-cert", "", "PEM client certificate to present to etcd (with --etcd-key)")
	f.StringVar(&s.keyFile, "etcd-key", "", "PEM private key of --etcd-cert")
	f.StringVar(&s.caSeal, "ca-seal-key", "", "file of 32 random bytes, base64 (head -c 32 /dev/urandom | base64), that encrypts the CA's key in the store; the same file on every replica")
}

// apply sets o's store options, refusing etcd flags without --store etcd
// (a typo would otherwise silently run on a local file).
func (s *storeFlags) apply(f *pflag.FlagSet, o *control.Options) error {
	o.CASealKeyFile = s.caSeal
	switch s.backend {
	case "bolt":
		for _, name := range []string{"etcd-endpoints", "etcd-prefix", "etcd-ca", "etcd-cert", "etcd-key"} {
			if f.Changed(name) {
				return fmt.Errorf("control: --%s needs --store etcd", name)
			}
		}
		return nil
	case "etcd":
		if len(s.endpoints) == 0 {
			return fmt.Errorf("control: --store etcd needs --etcd-endpoints, e.g. --etcd-endpoints http://127.0.0.1:2379")
		}
		o.Etcd.Endpoints = s.endpoints
		o.Etcd.Prefix = s.prefix
		o.Etcd.CAFile, o.Etcd.CertFile, o.Etcd.KeyFile = s.ca, s.cert, s.keyFile
		return nil
	}
	return fmt.Errorf("control: --store %q: want bolt or etcd", s.backend)
}
