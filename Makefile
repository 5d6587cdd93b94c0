# Trellis: `make demo` runs the demo shop, `make test` runs every test.
GO      ?= go
GOBIN   := $(shell $(GO) env GOPATH)/bin
BIN     := bin/trellis
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X trellis.dev/trellis/internal/cli.version=$(VERSION)

# make install puts trellis in $(go env GOPATH)/bin, or in $(PREFIX)/bin
# with PREFIX=/usr/local (DESTDIR for packagers).
PREFIX  ?=
BINDIR  := $(if $(PREFIX),$(PREFIX)/bin,$(GOBIN))

.PHONY: build install demo test test-short lint generate check-generate bench bench-scale fortio clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/trellis

install: build
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/trellis
	@case ":$$PATH:" in *":$(BINDIR):"*) ;; *) echo "note: $(BINDIR) is not on PATH; add it: export PATH=\"$(BINDIR):\$$PATH\"";; esac
	@echo "installed $(DESTDIR)$(BINDIR)/trellis"

demo: build
	./$(BIN) demo

# All tests, race detector on, end-to-end included; lint first.
test: lint
	$(GO) test -race -timeout 20m ./...

test-short:
	$(GO) test -short ./...

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@unformatted=$$(gofmt -l $$(find . -name '*.go' -not -name '*.pb.go' -not -path './.git/*')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# Regenerate api/ from .proto: needs protoc (Debian: protobuf-compiler); the
# Go plugins are installed at the versions that made the committed code.
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1

generate:
	$(GO) install $(PROTOC_GEN_GO)
	$(GO) install $(PROTOC_GEN_GO_GRPC)
	PATH="$(GOBIN):$$PATH" $(GO) generate ./api/...

# Fails if the committed generated code is not what `make generate` makes.
check-generate: generate
	@git diff --exit-code -- api/ || { echo "api/: generated code is stale; run make generate and commit"; exit 1; }

fortio:
	@test -x $(GOBIN)/fortio || $(GO) install fortio.org/fortio@v1.66.5

# Direct path vs Trellis vs HAProxy vs nginx, 0-byte and 1 KiB bodies, then
# gRPC, TCP bulk and 10,000 idle connections; writes bench/results/latest.json
# and latest.png. BENCH_FLAGS passes more (e.g. -gc-sweep, -only trellis,haproxy).
bench: build fortio
	$(GO) run ./bench/cmd/bench -trellis $(BIN) $(BENCH_FLAGS)

# The control plane's scale harness: one trellis control, 100/300/1000
# simulated proxies over 500 services; writes bench/results/scale.json.
# SCALE_FLAGS passes more (e.g. -full for full snapshots, -n 1000).
bench-scale: build
	$(GO) run ./bench/scale -trellis $(BIN) $(SCALE_FLAGS)

clean:
	rm -rf bin
