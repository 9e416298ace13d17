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

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libroomcast.a | $(BUILD)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libroomcast.a $(LDLIBS) \
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

clean:
	rm -rf build roomcast

FORMAT_FILES := $(wildcard src/*.c include/*.h tests/unit/*.c)
format:
	clang-format -i $(FORMAT_FILES)

format-check:
	@clang-format --dry-run --Werror $(FORMAT_FILES) && echo "format ok"
# Two replicas (8081, 8082) on a throwaway Redis and the dev PostgreSQL; see tools/run-cluster.sh.
run-cluster: deps
	@$(MAKE) --no-print-directory roomcast
	@tools/run-cluster.sh

