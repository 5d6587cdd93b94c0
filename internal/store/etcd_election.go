package store

import clientv3 "go.etcd.io/etcd/client/v3"

// Client is the etcd client under the store, for etcd's own coordination
// recipes (go.etcd.io/etcd/client/v3/concurrency: leader election among the
// replicas). It is not namespaced: put keys under KeyPrefix.
func (s *Etcd) Client() *clientv3.Client { return s.cli }

// KeyPrefix is the prefix of every key of this mesh (EtcdOptions.Prefix).
func (s *Etcd) KeyPrefix() string { return s.opts.Prefix }
