# Foster build and test entry points. `make test` is the README's test command
# and what CI runs (.ci/run).
GO ?= go
export GOTOOLCHAIN ?= local

# staticcheck, pinned, built from the Go module proxy (go run caches it).
# Measured on the 2-core dev machine under load: cold (nothing cached)
# ~10 min wall / 2m40s CPU, warm ~5 s; so `make test` runs it.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: test build vet lint bench clean image deploy-test chromium fleetsim

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

# The fleet simulator at scale (e2e/fleetsim_test.go; `make test` runs it
# with 50 devices): DEVICES agents (package client, each its own key and
# state dir) against 2 fosterd replicas on one PostgreSQL schema and one S3
# bucket, one replica SIGKILLed and restarted during the enrollments, the
# other during the rollout. The summary's last line is
# devices=N enrolled=N updated=N attested=N errors=0. The devices' state
# dirs go to FLEETSIM_DIR (default /dev/shm, so the simulated devices' own
# fsyncs stay off the disk fosterd and PostgreSQL use). docs/BENCHMARKS.md.
DEVICES ?= 10000
CONCURRENCY ?= 200
FLEETSIM_DIR ?= $(shell test -d /dev/shm && echo /dev/shm)
fleetsim:
	mkdir -p bin
	$(GO) test -c -o bin/e2e.test ./e2e
	cd e2e && ../bin/e2e.test -test.run '^TestFleetSimLosesNothingWhenReplicasAreKilled$$' -test.v -test.timeout 4h \
		-fleetsim.devices $(DEVICES) -fleetsim.concurrency $(CONCURRENCY) $(if $(FLEETSIM_DIR),-fleetsim.dir $(FLEETSIM_DIR))

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin image
