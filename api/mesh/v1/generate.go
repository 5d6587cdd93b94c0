// Package meshv1 holds the control-plane ↔ proxy protocol.
package meshv1

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative mesh.proto
