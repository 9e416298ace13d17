# roomcast build. `make` builds ./roomcast; `make test` runs unit and integration tests;
# `make run` starts a development server with a throwaway PostgreSQL. See README.md.

CC      ?= cc
PKGS    := libwebsockets libuv libpq hiredis json-c libjwt openssl
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wstrict-prototypes \
	   -Wmissing-prototypes -Wshadow -Wno-unused-parameter -Iinclude -Ibuild/gen \
	   $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm

ifeq ($(SANITIZE),1)
BUILD   := build/san
CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
BUILD   := build/rel
endif

SRCS    := $(filter-out src/main.c,$(wildcard src/*.c))
OBJS    := $(SRCS:src/%.c=$(BUILD)/%.o) $(BUILD)/gen_migrations.o
BIN     := $(BUILD)/roomcast
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
PYTHON  := /usr/bin/python3

.PHONY: all deps test unit integration run run-cluster clean format format-check bench check-ci

all: roomcast

roomcast: $(BIN)
	@ln -sf $(BIN) roomcast

deps:
	@tools/deps.sh

$(BUILD)/%.o: src/%.c $(wildcard include/*.h) | $(BUILD)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/gen_migrations.c: $(wildcard migrations/*.sql) tools/embed-sql.sh | $(BUILD)
	tools/embed-sql.sh migrations $@

$(BUILD)/gen_migrations.o: $(BUILD)/gen_migrations.c include/migrate.h
	$(CC) $(CFLAGS) -Wno-overlength-strings -c $< -o $@

# The dashboard (GET /admin) and the JS client, embedded by tools/embed-assets.sh as URL=file.
ASSETS  := /admin=web/admin/index.html /admin/app.js=web/admin/app.js \
	   /admin/style.css=web/admin/style.css /admin/roomcast.js=clients/js/roomcast.js
OBJS    += $(BUILD)/gen_assets.o

$(BUILD)/gen_assets.c: $(foreach a,$(ASSETS),$(word 2,$(subst =, ,$(a)))) tools/embed-assets.sh | $(BUILD)
	tools/embed-assets.sh $@ $(ASSETS)

$(BUILD)/gen_assets.o: $(BUILD)/gen_assets.c include/assets.h include/http.h include/util.h
	$(CC) $(CFLAGS) -Wno-overlength-strings -c $< -o $@

$(BUILD)/libroomcast.a: $(OBJS)
	ar rcs $@ $^

$(BIN): $(BUILD)/main.o $(BUILD)/libroomcast.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Each unit test links only its layer and those below it (README.md, Layout; checked by
# tests/integration/test_docs.py, the first object being the module under test): its
# objects are listed here rather than taken from the whole library, so a lower layer that starts
# calling up fails to link its test. A test without a list (the doors: test_apps,
# test_regress_fuzz) links the library.
UNIT_LINK_test_cidr          := cidr
UNIT_LINK_test_frame         := frame
UNIT_LINK_test_frame_wire    := frame
UNIT_LINK_test_log           := log buf util
UNIT_LINK_test_jscan         := jscan buf
UNIT_LINK_test_room          := room buf util
UNIT_LINK_test_auth          := auth log buf util
UNIT_LINK_test_config        := config auth cidr log buf util
UNIT_LINK_test_proto         := proto room frame buf util
UNIT_LINK_test_recent        := recent frame log buf util
UNIT_LINK_test_authz         := authz auth httpc room log buf util
UNIT_LINK_test_timers        := conn wheel frame metrics log buf util
UNIT_LINK_test_token_times   := conn wheel frame metrics log buf util
UNIT_LINK_test_pgc_conninfo  := pgc feedlink pgrelay metrics log buf util
UNIT_LINK_test_feedlink      := feedlink log buf util
UNIT_LINK_test_session_size  := session authz auth httpc presence redisbus router room proto \
	conn wheel frame pgl pgc recent pglisten pgwatch feedlink pgrelay bus metrics log buf util
unit_objs = $(filter $(OBJS),$(patsubst %,$(BUILD)/%.o,$(UNIT_LINK_$(1))))

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libroomcast.a | $(BUILD)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< \
		$(if $(UNIT_LINK_$*),$(call unit_objs,$*),$(BUILD)/libroomcast.a) $(LDLIBS) \
		$(shell pkg-config --cflags --libs check)

$(BUILD):
	@mkdir -p $(BUILD)

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; CK_FORK=yes $$t; done

# ROOMCAST_BIN may name another build (CI points it at build/san/roomcast).
ROOMCAST_BIN ?= $(CURDIR)/$(BIN)
integration: $(BIN)
	ROOMCAST_BIN=$(ROOMCAST_BIN) $(PYTHON) -m pytest -q -x tests/integration $(PYTEST_ARGS)

check-ci:
	@.ci/run

test: deps
	@$(MAKE) --no-print-directory roomcast
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration

run: deps
	@$(MAKE) --no-print-directory roomcast
	@tools/run-dev.sh

# Two replicas (8081, 8082) on a throwaway Redis and the dev PostgreSQL; see tools/run-cluster.sh.
run-cluster: deps
	@$(MAKE) --no-print-directory roomcast
	@tools/run-cluster.sh

clean:
	rm -rf build roomcast

FORMAT_FILES := $(wildcard src/*.c include/*.h tests/unit/*.c)
format:
	clang-format -i $(FORMAT_FILES)

format-check:
	@clang-format --dry-run --Werror $(FORMAT_FILES) && echo "format ok"

# ---- fuzzing (libFuzzer with clang; tests/fuzz/README.md) ----
# `make fuzz` builds every harness into build/fuzz/ and runs each for FUZZ_SECONDS;
# `make fuzz-smoke` runs each for 10 s (CI). Both exit non-zero when a harness crashes.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := proto notify jwt room
FUZZ_BUILD   := build/fuzz
FUZZ_CFLAGS  := -g -O1 -fno-omit-frame-pointer -std=c11 -D_GNU_SOURCE -Wall -Wextra \
		-Wno-unused-parameter -Iinclude -Ibuild/gen $(shell pkg-config --cflags $(PKGS)) \
		-fsanitize=address,undefined -fno-sanitize-recover=undefined
# The same objects as the main build (generated ones included), built into build/fuzz/obj.
FUZZ_OBJS    := $(patsubst $(BUILD)/%.o,$(FUZZ_BUILD)/obj/%.o,$(OBJS))
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)
# fuzz_notify checks what http.c publishes by wrapping bus_publish.
FUZZ_LDFLAGS_notify := -Wl,--wrap=bus_publish

.PHONY: fuzz fuzz-build fuzz-smoke

# The project's sources get coverage instrumentation (fuzzer-no-link) but no libFuzzer main.
$(FUZZ_BUILD)/obj/%.o: src/%.c $(wildcard include/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

# Generated sources (embedded SQL, assets) come from the main build's generators.
$(FUZZ_BUILD)/obj/gen_%.o: $(BUILD)/gen_%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Wno-overlength-strings -c $< -o $@

$(FUZZ_BUILD)/libroomcast.a: $(FUZZ_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(wildcard tests/fuzz/*.h) $(FUZZ_BUILD)/libroomcast.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Werror -Itests/fuzz -fsanitize=fuzzer -o $@ $< \
		$(FUZZ_BUILD)/libroomcast.a $(FUZZ_LDFLAGS_$*) $(LDLIBS)

fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	@tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: fuzz-build
	@tests/fuzz/run.sh 10 $(FUZZ_TARGETS)

# ---- benchmark (bench/run.py; results in bench/results/) ----
# `make bench` runs every scenario against roomcast and the Node.js baseline and prints one
# table (scale with BENCH_* variables, see bench/run.py); `make bench-smoke` is the seconds-long
# check that the load generator still counts deliveries against a real roomcast.
BENCH_BUILD  := build/bench
BENCH_CFLAGS := -O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
		-Wno-unused-parameter -Wno-missing-field-initializers \
		$(shell pkg-config --cflags libpq 2>/dev/null)
BENCH_LIBS   := $(shell pkg-config --libs libpq 2>/dev/null)
BENCH_TOOLS  := $(BENCH_BUILD)/loadgen $(BENCH_BUILD)/pglisten $(BENCH_BUILD)/sendfloor \
		$(BENCH_BUILD)/httpfloor

.PHONY: bench-tools bench-smoke

$(BENCH_BUILD)/%: bench/%.c bench/hist.h
	@mkdir -p $(BENCH_BUILD)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_LIBS)

bench-tools: $(BENCH_TOOLS)

bench/baseline/node_modules/.package-lock.json: bench/baseline/package-lock.json
	cd bench/baseline && npm ci --no-audit --no-fund --loglevel=error

# BENCH_ONLY picks scenarios (comma list); `presence` is bench/presence.py's, run after the rest.
bench: roomcast bench-tools bench/baseline/node_modules/.package-lock.json
	@if [ "$${BENCH_ONLY:-}" != presence ]; then $(PYTHON) bench/run.py; fi
	@case ",$${BENCH_ONLY:-presence}," in *,presence,*) \
		ROOMCAST_BIN=$(CURDIR)/$(BIN) $(PYTHON) bench/presence.py ;; esac

bench-smoke: roomcast bench-tools
	@$(PYTHON) bench/run.py --smoke

# Presence cost: CPU per join+leave with and without watchers and Redis, and a presence query
# on a room of 10 000 users (bench/presence.py).
.PHONY: bench-presence
bench-presence: roomcast
	ROOMCAST_BIN=$(CURDIR)/$(BIN) $(PYTHON) bench/presence.py

# ---- fault matrix and soak (tests/integration/test_faults.py, test_conformance.py, tests/soak/) ----
# `make check-faults` runs the whole fault matrix and frame-level conformance suite, including
# the rows marked `slow` that `make test` leaves out (tests/integration/pytest.ini deselects
# them by default), then every other `slow` row of the integration suite (exit 5 = none).
# `make soak` runs tests/soak/soak.py: 2 000 connections in 200 rooms, one database event per
# room per second, for SOAK_SECONDS (RSS, descriptors and latency p99 every 10 s).
SOAK_SECONDS ?= 180
SOAK_ARGS    ?=

.PHONY: check-faults soak

check-faults: $(BIN)
	ROOMCAST_BIN=$(ROOMCAST_BIN) $(PYTHON) -m pytest -q -m "slow or not slow" \
		tests/integration/test_faults.py tests/integration/test_conformance.py $(PYTEST_ARGS)
	ROOMCAST_BIN=$(ROOMCAST_BIN) $(PYTHON) -m pytest -q -m slow tests/integration \
		--ignore=tests/integration/test_faults.py \
		--ignore=tests/integration/test_conformance.py $(PYTEST_ARGS) || [ $$? -eq 5 ]

soak: $(BIN)
	ROOMCAST_BIN=$(ROOMCAST_BIN) $(PYTHON) tests/soak/soak.py --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

# `make valgrind` runs the integration suite with every roomcast process it starts under
# valgrind memcheck (tests/valgrind/run.sh): a memory error or a definite or indirect leak in
# any process fails it, as does a failing test. VALGRIND_ARGS are pytest arguments (default:
# the whole integration suite, about 10 min on 2 cores; .ci/run runs it).
VALGRIND_ARGS ?= tests/integration
VALGRIND_LOGS := build/valgrind

.PHONY: valgrind

valgrind: $(BIN)
	tests/valgrind/run.sh $(CURDIR)/$(BIN) $(VALGRIND_LOGS) $(VALGRIND_ARGS)

# `make check-deploy` builds the Dockerfile and runs docker-compose.yml for real with podman,
# podman-compose and buildah (tools/check-deploy.sh: needs root, 1-2.5 min), checks the stack
# through nginx and removes everything it started.
.PHONY: check-deploy

check-deploy:
	tools/check-deploy.sh
