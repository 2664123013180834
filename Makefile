# Foster build and test entry points. `make test` is the README's test command
# and what CI runs (.ci/run).
GO ?= go
export GOTOOLCHAIN ?= local

# staticcheck, pinned, built from the Go module proxy (go run caches it).
# Measured on the 2-core dev machine under load: cold (nothing cached)
# ~10 min wall / 2m40s CPU, warm ~5 s; so `make test` runs it.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: test build vet lint bench clean image deploy-test chromium

test: vet lint chromium
	$(GO) test -count=1 -timeout 30m ./...

# Debian's chromium, for the console's browser test (e2e/console_test.go).
chromium:
	sh scripts/install-chromium.sh

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

lint:
	$(GO) run $(STATICCHECK) ./...

# Production binaries: no -tags fostertest, so no test hooks (pkg/env/hook.go).
build:
	mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=auto -ldflags='-s -w' -o bin/ ./cmd/fosterd ./cmd/foster ./cmd/foster-agent

# fosterd's container image, without a Docker daemon (deploy/image): an OCI
# layout in image/oci and a tarball for `docker load -i image/fosterd.tar`.
image: build
	rm -rf image
	mkdir -p image
	$(GO) run ./deploy/image --bin bin --out image/oci --tar image/fosterd.tar

# The Helm chart's tests (helm lint, helm template, strict decoding into the
# Kubernetes API types) are their own Go module, deploy/helm, and not part
# of `make test`: building helm v4 cold takes minutes on 2 cores.
deploy-test:
	cd deploy/helm && $(GO) vet ./... && $(GO) test -count=1 -timeout 30m ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin image
