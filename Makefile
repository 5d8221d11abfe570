# GTStore: build, lint, test, install, and run a local cluster.
#
#   make start [NODES=1] [REP=1] [R=] [W=] [BASE_PORT=7000] [RUN_DIR=run] [FSYNC=batch] [RESP=1]
#   make stop | status | kill NODE=i | restart NODE=i | add NODE=i | kill-manager | restart-manager
#   make [all] | lint | man-check | test | install [PREFIX=/usr/local] [DESTDIR=] | clean
#   make sim [SEEDS=200] | sim-selftest [SEEDS=200]
#
# The manager listens on 127.0.0.1:BASE_PORT with its state in RUN_DIR/manager; storage node i
# listens on 127.0.0.1:BASE_PORT+i with its data in RUN_DIR/node<i>, and serves RESP2 (redis-cli, Redis
# clients) on 127.0.0.1:BASE_PORT+100+i unless RESP is empty. Every daemon is started with
# --daemon, which returns only once the daemon is ready (for a node: joined, with its sectors received),
# so `make start` returns once every node has joined. Extra daemon flags: MANAGER_FLAGS, NODE_FLAGS.
# Every daemon gets --cluster-key RUN_DIR/cluster.key, made once (32 random bytes, mode 0600) by the
# first target that starts one; CLIENT_KEY=FILE also gives the nodes --client-key FILE.
# BIN is where the binaries are taken from (default target/release). NOBUILD=1 skips the release
# build in `start`; the test harness sets both, since `cargo test` already built the binaries.
# Prometheus metrics: http://127.0.0.1:BASE_PORT+200/metrics for the manager, BASE_PORT+200+i for node i.

NODES         = 1
REP           = 1
R             =
W             =
BASE_PORT     = 7000
RUN_DIR       = run
FSYNC         = batch
NODE          =
MANAGER_FLAGS =
NODE_FLAGS    =
CLIENT_KEY    =
RESP          = 1
NOBUILD       =
PREFIX       ?= /usr/local
DESTDIR      ?=
CARGO        ?= cargo

BIN       = target/release
BINS      = gtstore gtstore-manager gtstore-storage gtstore-bench gtstore-sim
DAEMONS   = scripts/daemons.sh
MANAGER   = 127.0.0.1:$(BASE_PORT)
MAN_PAGES = $(wildcard man/*.1 man/*.5 man/*.8)

MANAGER_PID = $(RUN_DIR)/manager/gtstore-manager.pid
CLUSTER_KEY = $(RUN_DIR)/cluster.key

# Makes RUN_DIR (0700) and the cluster key in it, unless it exists: 32 bytes from the kernel's
# generator, written under umask 077 and renamed into place, so no daemon reads half a key.
KEY_CMD = mkdir -p -m 0700 "$(RUN_DIR)" && { test -f "$(CLUSTER_KEY)" || { (umask 077 && \
	head -c 32 /dev/urandom > "$(CLUSTER_KEY).new") && mv "$(CLUSTER_KEY).new" "$(CLUSTER_KEY)"; }; }
# node_pid,I: the pidfile of storage node I.
node_pid = $(RUN_DIR)/node$(1)/gtstore-storage.pid

# The manager's command line, shared by start and restart-manager.
MANAGER_CMD = $(KEY_CMD) && mkdir -p -m 0700 "$(RUN_DIR)/manager" && \
	$(BIN)/gtstore-manager --daemon --listen $(MANAGER) --cluster-key "$(CLUSTER_KEY)" \
	--metrics-listen 127.0.0.1:$$(($(BASE_PORT) + 200)) \
	--data-dir "$(RUN_DIR)/manager" --log "$(RUN_DIR)/manager/manager.log" --rep $(REP) \
	$(if $(R),--read-quorum $(R)) $(if $(W),--write-quorum $(W)) $(MANAGER_FLAGS)

# node_cmd,I: storage node I's command line (I is a number or a shell expansion such as $$i),
# shared by start, restart and add.
node_cmd = $(KEY_CMD) && mkdir -p -m 0700 "$(RUN_DIR)/node$(1)" && \
	$(BIN)/gtstore-storage --daemon --id $(1) --listen 127.0.0.1:$$(($(BASE_PORT) + $(1))) \
	--metrics-listen 127.0.0.1:$$(($(BASE_PORT) + 200 + $(1))) \
	--cluster-key "$(CLUSTER_KEY)" $(if $(CLIENT_KEY),--client-key "$(CLIENT_KEY)") \
	--manager $(MANAGER) --data-dir "$(RUN_DIR)/node$(1)" --log "$(RUN_DIR)/node$(1)/storage.log" \
	$(if $(RESP),--resp-listen 127.0.0.1:$$(($(BASE_PORT) + 100 + $(1)))) --fsync $(FSYNC) $(NODE_FLAGS)

# The man page lint: mandoc -Tlint where mandoc is installed (.ci/run installs it), else
# groff's warnings (groff-base is on a fresh machine), so `make test` works on either.
MANDOC_LINT = @if [ -z "$(MAN_PAGES)" ]; then echo "man-check: no pages in man/" >&2; exit 1; \
	elif command -v mandoc >/dev/null; then echo "mandoc -Tlint -Wwarning $(MAN_PAGES)"; \
		mandoc -Tlint -Wwarning $(MAN_PAGES); \
	else echo "mandoc not found: groff -mandoc -ww -z $(MAN_PAGES)"; \
		out=$$(for p in $(MAN_PAGES); do groff -mandoc -ww -z "$$p" 2>&1; done); \
		[ -z "$$out" ] || { echo "$$out" >&2; exit 1; }; fi

.PHONY: all build start stop status kill restart add kill-manager restart-manager \
	lint man-check test install clean need-node

all:
	$(CARGO) build --release

build:
ifeq ($(NOBUILD),)
	@$(CARGO) build --release --quiet
endif

start: build
	@$(MANAGER_CMD)
	@echo "gtstore-manager on $(MANAGER), state in $(RUN_DIR)/manager"
	@for i in $$(seq 1 $(NODES)); do \
		$(call node_cmd,$$i) || exit $$?; \
		echo "gtstore-storage $$i on 127.0.0.1:$$(($(BASE_PORT) + $$i))$(if $(RESP), (RESP2 on 127.0.0.1:$$(($(BASE_PORT) + 100 + $$i)))), data in $(RUN_DIR)/node$$i"; \
	done

stop:
	@$(DAEMONS) stop "$(RUN_DIR)"

# status asks the manager, then, if it is down, the nodes that have a data directory in RUN_DIR
# (node i on BASE_PORT+i); with the manager down it prints a node's table and says so, exit 0.
status:
	@addrs="$(MANAGER)"; for d in "$(RUN_DIR)"/node*; do i=$${d##*/node}; \
		case "$$i" in ''|*[!0-9]*) continue;; esac; addrs="$$addrs,127.0.0.1:$$(($(BASE_PORT) + i))"; done; \
	$(BIN)/gtstore --manager "$$addrs" $(if $(CLIENT_KEY),--key-file "$(CLIENT_KEY)") status

need-node:
	@case "$(NODE)" in ''|*[!0-9]*) \
		echo "make $(MAKECMDGOALS): NODE=i (a storage node id) is required" >&2; exit 2;; esac

kill: need-node
	@$(DAEMONS) pid gtstore-storage "$(call node_pid,$(NODE))" >/dev/null || \
		{ echo "make kill: node $(NODE) is not running" >&2; exit 1; }
	@$(DAEMONS) kill gtstore-storage "$(call node_pid,$(NODE))"

restart: need-node
	@test -d "$(RUN_DIR)/node$(NODE)" || \
		{ echo "make restart: $(RUN_DIR)/node$(NODE) does not exist (use make add)" >&2; exit 1; }
	@$(call node_cmd,$(NODE))

add: need-node
	@$(call node_cmd,$(NODE))

kill-manager:
	@$(DAEMONS) pid gtstore-manager "$(MANAGER_PID)" >/dev/null || \
		{ echo "make kill-manager: the manager is not running" >&2; exit 1; }
	@$(DAEMONS) kill gtstore-manager "$(MANAGER_PID)"

restart-manager:
	@$(MANAGER_CMD)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(MANDOC_LINT)

man-check:
	$(MANDOC_LINT)

test: lint
	$(CARGO) test --release

install: all
	install -d "$(DESTDIR)$(PREFIX)/bin" "$(DESTDIR)$(PREFIX)/share/man/man1" \
		"$(DESTDIR)$(PREFIX)/share/man/man5" "$(DESTDIR)$(PREFIX)/share/man/man8"
	install -m 0755 $(addprefix $(BIN)/,$(BINS)) "$(DESTDIR)$(PREFIX)/bin/"
	for page in $(MAN_PAGES); do \
		sec=$${page##*.}; \
		install -m 0644 "$$page" "$(DESTDIR)$(PREFIX)/share/man/man$$sec/" || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf run

# ----- benchmarks (gtstore-bench(1)); each starts and removes its own clusters -----
#
#   make bench        SPEC section 9 sequences 5 and 6 -> bench/results/{throughput,balance}.{csv,svg}
#   make bench-redis  redis-benchmark against GTStore in one run -> bench/results/vs-redis.csv
#   make bench-peers  Redis, Valkey with 2 replicas and GTStore (native and RESP), one load
#                     generator, one run -> bench/results/vs-peers.{csv,svg} and the ratios
#   make bench-scale  bytes per key, restart time, ops/s on 1..7 nodes -> bench/results/scale.csv
#
# BENCH_OPS (operations per run), BENCH_PORT (the clusters' BASE_PORT), BENCH_RUN_DIR,
# REDIS_PORT, VALKEY_PORT (the Valkey primary; its replicas on the next two) and SCALE_KEYS
# override the defaults.
BENCH_OPS     = 200000
BENCH_PORT    = 7500
BENCH_RUN_DIR = run-bench
REDIS_PORT    = 7600
VALKEY_PORT   = 7620
SCALE_KEYS    = 1000000
BENCH_ENV     = BIN="$(BIN)" BENCH_OPS=$(BENCH_OPS) BENCH_PORT=$(BENCH_PORT) BENCH_RUN_DIR="$(BENCH_RUN_DIR)"

.PHONY: sim sim-selftest

# Seeds `make sim` and `make sim-selftest` run (gtstore-sim(1)).
SEEDS = 200

# Deterministic simulation: SEEDS seeded cluster runs under faults, checked;
# ends with `sim: N seeds, F failed` and a replay command per failing seed.
sim: build
	$(BIN)/gtstore-sim --seeds $(SEEDS) --quiet

# The checker's teeth: a build with planted bugs must fail some seed for each.
sim-selftest:
	$(CARGO) build --release --quiet --features planted-bugs --target-dir target/planted --bin gtstore-sim
	target/planted/release/gtstore-sim --selftest --seeds $(SEEDS)

.PHONY: bench bench-redis bench-peers bench-scale

bench: build
	@$(BENCH_ENV) scripts/bench-cluster.sh

bench-redis: build
	@$(BENCH_ENV) REDIS_PORT=$(REDIS_PORT) scripts/bench-redis.sh

bench-peers: build
	@$(BENCH_ENV) REDIS_PORT=$(REDIS_PORT) VALKEY_PORT=$(VALKEY_PORT) scripts/bench-peers.sh

bench-scale: build
	@$(BENCH_ENV) SCALE_KEYS=$(SCALE_KEYS) scripts/bench-scale.sh

# ----- fuzzing (README "Fuzzing"): coverage-guided, cargo-fuzz on the stable toolchain -----
#
#   make fuzz [FUZZ_S=60] [FUZZ_TARGETS=...]   every target FUZZ_S seconds, one after another
#   make fuzz-short                             every target FUZZ_SHORT_S seconds (.ci/run)
#
# Installs cargo-fuzz if missing. Targets are in fuzz/fuzz_targets/, seeds in fuzz/corpus/<target>/,
# inputs that once failed in fuzz/regressions/<target>/; scripts/fuzz.sh says what a run does.
FUZZ_S       = 60
FUZZ_SHORT_S = 10
FUZZ_TARGETS = codec record wal hints manager_state

.PHONY: fuzz fuzz-short cargo-fuzz

cargo-fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

fuzz: cargo-fuzz
	@CARGO="$(CARGO)" scripts/fuzz.sh $(FUZZ_S) $(FUZZ_TARGETS)

fuzz-short: cargo-fuzz
	@CARGO="$(CARGO)" scripts/fuzz.sh $(FUZZ_SHORT_S) $(FUZZ_TARGETS)
