# resync: see README.md. Every target works on a fresh machine with only Go
# (and Docker for the container targets).
GO        ?= go
PKGS      ?= ./...
TEST_TIMEOUT ?= 20m
BIN       ?= bin

.PHONY: all build test lint cover fuzz clean chaos

all: lint build test

build:
	$(GO) build ./...

## test: the whole suite against real (embedded) etcd, with the race detector.
test:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

## lint: formatting and vet.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## cover: test with coverage; writes cover.out and prints the total.
cover:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -coverprofile=cover.out -covermode=atomic $(PKGS)
	$(GO) tool cover -func=cover.out | tail -1

## fuzz: run every fuzz target for FUZZTIME each (default 10s).
FUZZTIME ?= 10s
fuzz:
	@for target in FuzzDecodeRecords FuzzParseKey FuzzValidateName; do \
		echo "== $$target ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) ./schema || exit 1; \
	done

## chaos: one long chaos run against a 3-member etcd cluster (make chaos
## DURATION=10m SEED=42; no SEED: from the clock, printed), then the
## paused-leader run that proves the checker catches an unfenced write.
## Replay a failed CI seed with the SEED it printed.
DURATION ?= 2m
SEED ?=
CHAOS_TIMEOUT ?= 3h
chaos:
	CHAOS_DURATION=$(DURATION) CHAOS_SEED=$(SEED) $(GO) test -race -count=1 -timeout $(CHAOS_TIMEOUT) \
		-tags resync_chaos -run 'Chaos' -v ./integration/

clean:
	rm -rf $(BIN) cover.out
