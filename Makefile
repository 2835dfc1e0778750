# escrowd build. `make run` and `make test` are the two entry points; both
# install what a fresh Debian machine lacks (SoftHSM) and build the Vault
# dev server once, caching it under .cache/.

GO        ?= go
CACHE     := $(CURDIR)/.cache
BIN       := $(CURDIR)/bin
VAULTDEV  := $(CACHE)/bin/vaultdev
SOFTHSM   := /usr/lib/softhsm/libsofthsm2.so
CHROMIUM  := /usr/bin/chromium
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
BUF                := github.com/bufbuild/buf/cmd/buf@v1.75.0
STATICCHECK        := honnef.co/go/tools/cmd/staticcheck@v0.8.2
TEST_TIMEOUT       ?= 30m

export ESCROWD_VAULTDEV := $(VAULTDEV)
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: all build deps postgres vaultdev test lint run demo proto fuzz bench bench-quick bench-bins clean

all: build

build:
	$(GO) build -o $(BIN)/escrowd ./cmd/escrowd
	$(GO) build -o $(BIN)/escrowctl ./cmd/escrowctl

# deps installs what the tests and `make run` need: SoftHSM and Chromium
# from Debian's packages, playwright-core (which drives Chromium in the
# browser test) from npm's lock file — no tool may download a browser — and
# a PostgreSQL answering on 127.0.0.1:5432 for the store tests (trust
# authentication for user postgres on the loopback, as the tests' harness
# expects; set ESCROWD_PG_URL to use another server).
deps: $(SOFTHSM) $(CHROMIUM) web/node_modules clients/web/node_modules postgres

postgres:
	@if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then exit 0; fi; \
	if ! command -v pg_ctlcluster >/dev/null 2>&1; then \
		echo "installing PostgreSQL from Debian's packages"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi; \
	ver=$$(ls /etc/postgresql | sort -n | tail -1); \
	hba=/etc/postgresql/$$ver/main/pg_hba.conf; \
	grep -q '^host all postgres 127.0.0.1/32 trust' $$hba || \
		sed -i '1i host all postgres 127.0.0.1/32 trust' $$hba; \
	pg_ctlcluster --skip-systemctl-redirect $$ver main start || pg_ctlcluster --skip-systemctl-redirect $$ver main reload; \
	for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
	echo "PostgreSQL did not start" >&2; exit 1

$(SOFTHSM):
	@echo "installing SoftHSM from Debian's packages"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2

$(CHROMIUM):
	@echo "installing Chromium from Debian's packages (for the browser test)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

web/node_modules:
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix web --no-audit --no-fund

# The device SDK (@escrowd/device): TypeScript and esbuild from npm's lock
# file. `make lint` type-checks it in strict mode.
clients/web/node_modules: clients/web/package-lock.json
	npm ci --prefix clients/web --no-audit --no-fund
	@touch $@

# The Vault dev server is its own module (tools/vaultdev) so that Vault's
# dependencies never reach the daemon's go.mod. A cold build takes minutes.
vaultdev: $(VAULTDEV)

$(VAULTDEV): tools/vaultdev/go.mod tools/vaultdev/go.sum $(wildcard tools/vaultdev/*.go)
	@mkdir -p $(dir $@)
	@echo "building the Vault dev server (first time: several minutes)"
	cd tools/vaultdev && $(GO) build -o $@ .

test: deps vaultdev lint
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
	npm test --prefix clients/web --silent
	node --test clients/web/test/*.test.mjs

lint: clients/web/node_modules
	npm run --prefix clients/web --silent check
	clients/web/node_modules/.bin/tsc -p clients/web/test/state/tsconfig.json
	clients/web/node_modules/.bin/tsc -p examples/pwa/tsconfig.json
	clients/web/node_modules/.bin/tsc -p examples/pwa/tsconfig.sw.json
	node clients/web/scripts/states-diagram.mjs --check docs/DEVICE.md
	test -z "$$(gofmt -l $$(git ls-files '*.go'))"
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	GO=$(GO) BUF=$(BUF) scripts/check-api.sh

# fuzz runs every fuzz target for FUZZTIME each. Plain `go test` (and so
# `make test`) already runs each target's seed corpus as a test.
FUZZTIME ?= 30s
fuzz:
	@set -e; for f in $$(git ls-files -- '*_test.go' ':!tools' | xargs grep -l '^func Fuzz'); do \
		pkg=./$$(dirname $$f); \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "$$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# bench measures the real stack (docs/BENCHMARKS.md): a fresh SoftHSM
# token, the Vault dev server, escrowd over mutual TLS. It prints a markdown
# table and writes bench/results.json. BENCH_* variables shorten it, e.g.
# `make bench BENCH_GROUPS=10000 BENCH_SECONDS=2` for a smoke run.
bench: bench-bins
	BENCH_BIN=$(BIN) $(BIN)/escrowbench

# bench-quick prints the same interleaved ratios from shorter points, on
# stores of 1,000 and 10,000 groups, without the concurrency sweeps and
# the KEK rotation: under 3 minutes on 2 cores.
bench-quick: bench-bins
	BENCH_BIN=$(BIN) BENCH_QUICK=1 BENCH_GROUPS=$${BENCH_GROUPS:-10000} BENCH_POINT=$${BENCH_POINT:-0.5} \
		BENCH_OUT=$${BENCH_OUT:-.run/bench-quick.json} $(BIN)/escrowbench

bench-bins: deps vaultdev
	$(GO) build -tags escrowd_pprof -o $(BIN)/escrowd-bench ./cmd/escrowd
	$(GO) build -tags escrowd_pprof,escrowd_noaudit -o $(BIN)/escrowd-noaudit ./cmd/escrowd
	$(GO) build -o $(BIN)/escrowctl ./cmd/escrowctl
	$(GO) build -o $(BIN)/escrowbench ./cmd/escrowbench

run: deps vaultdev build
	./scripts/run-dev.sh

# demo runs what run does, plus the reference sync backend and the demo PWA
# (examples/), and prints the app's URL and the support commands; Ctrl-C
# stops all of it. It needs neither PostgreSQL nor Chromium.
demo: $(SOFTHSM) vaultdev build clients/web/node_modules
	$(GO) build -o $(BIN)/syncbackend ./examples/syncbackend
	$(GO) build -o $(BIN)/pwaserve ./examples/pwa/serve
	./scripts/demo.sh

proto:
	GOBIN=$(CACHE)/bin $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(CACHE)/bin $(GO) install $(PROTOC_GEN_GO_GRPC)
	PATH=$(CACHE)/bin:$$PATH protoc -I api \
		--go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		api/escrowd/v1/escrowd.proto

clean:
	rm -rf $(BIN) .run
