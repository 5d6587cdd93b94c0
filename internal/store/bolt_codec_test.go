package store

import (
	"bytes"
	"testing"
)

// FuzzEventRecord: every event survives the on-disk record format, whatever
// bytes its key and value hold.
func FuzzEventRecord(f *testing.F) {
	f.Add("k", []byte("v"), int64(1), int64(2), int64(3), true)
	f.Add("", []byte(nil), int64(0), int64(0), int64(0), false)
	f.Add("a/\x00b", []byte{0, 1, 2}, int64(-1), int64(1<<62), int64(7), true)
	f.Fuzz(func(t *testing.T, key string, value []byte, create, mod, lease int64, put bool) {
		ev := Event{Type: EventDelete, KV: KV{Key: key, Value: value, CreateRevision: create, ModRevision: mod, Lease: LeaseID(lease)}}
		if put {
			ev.Type = EventPut
		}
		got := decodeEvent(encodeEvent(ev))
		if got.Type != ev.Type || got.KV.Key != key || !bytes.Equal(got.KV.Value, value) ||
			got.KV.CreateRevision != create || got.KV.ModRevision != mod || got.KV.Lease != LeaseID(lease) {
			t.Fatalf("round trip: %+v -> %+v", ev, got)
		}
		kv := decodeKV(key, encodeKV(ev.KV))
		if kv.Key != key || !bytes.Equal(kv.Value, value) || kv.CreateRevision != create || kv.ModRevision != mod || kv.Lease != LeaseID(lease) {
			t.Fatalf("KV round trip: %+v -> %+v", ev.KV, kv)
		}
	})
}
