# resync: see README.md. Every target works on a fresh machine with only Go
# (and Docker for the container targets).
GO        ?= go
PKGS      ?= ./...
TEST_TIMEOUT ?= 20m
BIN       ?= bin

.PHONY: all build binaries run demo test test-long lint cover fuzz clean bench bench-go soak chaos images up down e2e rules-test

all: lint build test test-long

## build: compile every package and the three commands into bin/.
build: binaries
	$(GO) build ./...

binaries:
	$(GO) build -o $(BIN)/ ./cmd/resyncd ./cmd/resyncctl ./cmd/resync-agent

## run: resyncd on its embedded etcd (clients on 127.0.0.1:2379, HTTP on
## 127.0.0.1:9090, data in ./resyncd.etcd); Ctrl-C stops it.
run: binaries
	$(BIN)/resyncd $(ARGS)

## demo: resyncd + 3 demo agents x 3 plugins, a triggered round and its
## status; Ctrl-C stops it (or set DEMO_SECONDS).
demo: binaries
	BIN=$(BIN) ./scripts/demo.sh

## test: the suite against real (embedded) etcd, with the race detector,
## but for the long scenario tests (LONG_TESTS), which test-long runs.
## The two together are the whole suite, as plain go test ./... is.
LONG_TESTS ?= ^(TestChaos|TestTenThousandFailuresStayWithinTheBudget|TestProcessesEndToEnd)$$
## TEST_P: test packages run at once. The suite mostly waits on etcd
## (leases, timeouts), not the CPU: at go's default of one per core (2 here)
## make test used 0.6 of a core; at 4 it uses 0.9 and takes 2.5 min, not 4.
TEST_P ?= 4
test:
	$(GO) test -p $(TEST_P) -race -count=1 -timeout $(TEST_TIMEOUT) -skip '$(LONG_TESTS)' $(PKGS)

## test-long: the long scenario tests alone (CI runs them after make test):
## three chaos seeds, 10,000 failure reports against the error budget, and
## the binaries end to end.
test-long:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -run '$(LONG_TESTS)' $(PKGS)

## lint: formatting and vet, then the function-length report
## (scripts/funclen: the library's longest functions, cmd/'s mean). The
## report is information, never a gate: its numbers do not fail the build.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@$(GO) run ./scripts/funclen || echo "funclen: report failed (not a gate)"

## cover: test with coverage; writes cover.out and prints the total.
cover:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -coverprofile=cover.out -covermode=atomic $(PKGS)
	$(GO) tool cover -func=cover.out | tail -1

## fuzz: run every fuzz target for FUZZTIME each: a count of inputs (the
## default, 200000x: bounded, and free of the spurious "context deadline
## exceeded" that Go's fuzzer can report when a time budget ends while a
## worker is busy) or a duration (FUZZTIME=10m for a long run).
FUZZTIME ?= 200000x
fuzz:
	@for target in FuzzDecodeRecords FuzzParseKey FuzzValidateName FuzzNameEscape; do \
		echo "== $$target ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) ./schema || exit 1; \
	done

## bench: build cmd/resync-bench and run it: one embedded etcd (fsync on),
## round latency vs the etcd floor and a DoubleBarrier, failover, memory,
## keys; a table on stdout and BENCH_OUT (JSON). BENCH_FLAGS selects sizes
## and rounds for quick runs, e.g. BENCH_FLAGS="-sizes 1x1,10x10 -rounds 5".
## BENCH_FLAGS="-agents-apart -sizes 1x1,100x10 -only rounds" also runs each
## size with its agents in a child process pinned to one CPU, etcd and the
## coordinator on the others (Linux, 2+ CPUs; docs/performance.md). Wave
## sizes: 5000x10~500 (500 agents in flight, on the request), ~10% (of the
## round's agents), 10000x10~budget (-budget-window agents, default 50,
## set on the coordinator as resyncd --max-in-flight sets it).
BENCH_OUT   ?= bench/results.json
BENCH_FLAGS ?=
bench:
	$(GO) build -o $(BIN)/resync-bench ./cmd/resync-bench
	$(BIN)/resync-bench -out $(BENCH_OUT) $(BENCH_FLAGS)

## soak: resyncd's coordinator and embedded etcd with the production
## defaults (compaction, quota, storage monitor; fsync on) and an in-process
## fleet of SOAK_SIZE real agents running rounds back to back for
## SOAK_DURATION, sampled every 5 s; writes bench/soak.json and the plot
## bench/soak.svg, and fails unless, over the last third, db size and heap
## grew < 5%, no round failed and latency stayed flat.
SOAK_DURATION ?= 10m
SOAK_SIZE     ?= 200x10
soak:
	$(GO) build -o $(BIN)/resync-bench ./cmd/resync-bench
	$(BIN)/resync-bench -soak $(SOAK_DURATION) -soak-size $(SOAK_SIZE) -soak-out bench/soak.json -soak-svg bench/soak.svg

## bench-go: the hot-path Go benchmarks (schema, coordinator, watcher).
BENCHTIME ?= 1s
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./schema ./coordinator ./watcher

## chaos: one long chaos run against a 3-member etcd cluster (make chaos
## DURATION=10m SEED=42; no SEED: from the clock, printed), then the
## paused-leader run that proves the checker catches an unfenced write.
## Replay a failed CI seed with the SEED it printed. A run takes DURATION
## plus about a minute (build, cluster start, final phase, teardown, the
## checker, the paused-leader run: 10m took 10m14s); CHAOS_TIMEOUT leaves
## room for DURATION=30m many times over. A steady trigger keeps rounds at
## ~0.9/s (1,635 in 30m with 24 etcd restores, seed 20261216).
DURATION ?= 2m
SEED ?=
CHAOS_TIMEOUT ?= 3h
chaos:
	CHAOS_DURATION=$(DURATION) CHAOS_SEED=$(SEED) $(GO) test -race -count=1 -timeout $(CHAOS_TIMEOUT) \
		-tags resync_chaos -run 'Chaos' -v ./integration/

## rules-test: check the Prometheus alerting rules and run their unit tests
## (promtool, from Debian's prometheus package).
PROMTOOL ?= promtool
rules-test:
	$(PROMTOOL) check rules deploy/prometheus/rules.yml
	cd deploy/prometheus && $(PROMTOOL) test rules rules_test.yml

## Containers. No registry is reachable here, so images are built FROM
## scratch from static binaries: ours, and etcd/etcdctl built from the etcd
## modules at the version go.mod pins. Binaries first (Go's build cache makes
## rebuilds quick), then small COPY-only images; Prometheus' image is
## Debian's prometheus binary (apt-get install prometheus) with the shared
## libraries it needs, staged by scripts/stage-prometheus.sh.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
STATIC  = CGO_ENABLED=0 $(GO) build -trimpath -ldflags="-s -w"
images:
	@mkdir -p $(BIN)/docker/resync $(BIN)/docker/etcd
	$(STATIC) -o $(BIN)/docker/resync/ ./cmd/resyncd ./cmd/resyncctl ./cmd/resync-agent
	$(STATIC) -o $(BIN)/docker/etcd/etcd go.etcd.io/etcd/server/v3
	$(STATIC) -o $(BIN)/docker/etcd/etcdctl go.etcd.io/etcd/etcdctl/v3
	docker build -q -f deploy/Dockerfile.etcd -t resync-etcd:dev $(BIN)/docker/etcd
	docker build -q -f deploy/Dockerfile.resync -t resync:dev $(BIN)/docker/resync
	./scripts/stage-prometheus.sh $(BIN)/docker/prometheus
	docker build -q -f deploy/Dockerfile.prometheus -t resync-prometheus:dev $(BIN)/docker/prometheus

## up / down: the compose cluster (project "resync"); down removes volumes.
up: images
	$(COMPOSE) -p resync up -d
down:
	$(COMPOSE) -p resync down -v --remove-orphans

## e2e: the scripted fault scenario against a fresh compose cluster (project
## "resync-e2e", always torn down).
E2E_TIMEOUT ?= 15m
e2e: images binaries
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -v -run TestE2E ./integration/e2e/

clean:
	rm -rf $(BIN) cover.out resyncd.etcd
