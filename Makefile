# suido build. `make run` and `make test` are the two commands a new machine needs (README).
# SAN=1 builds everything with AddressSanitizer + UndefinedBehaviorSanitizer into build/san/.

SAN ?= 0
# BUILD_DIR: where the build goes (default build/), so that two checkouts' builds never mix.
BUILD_ROOT := $(or $(BUILD_DIR),build)
ifeq ($(SAN),1)
  BUILD := $(BUILD_ROOT)/san
  SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  OPT := -O1
else
  BUILD := $(BUILD_ROOT)
  SANFLAGS :=
  OPT := -O2 -D_FORTIFY_SOURCE=2
endif
BIN := $(BUILD)/bin
OBJ := $(BUILD)/obj
GEN := $(BUILD)/gen

CC ?= cc
WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
        -Wno-missing-field-initializers -Wno-format-truncation
# libpq (the archive's PostgreSQL engine, common/cm_sql.c): its headers live outside /usr/include
PQ_CFLAGS := $(shell pkg-config --cflags libpq 2>/dev/null || echo -I/usr/include/postgresql)
PQ_LIBS := $(shell pkg-config --libs libpq 2>/dev/null || echo -lpq)
CFLAGS := -std=c11 -D_GNU_SOURCE $(OPT) -g $(WARN) -fstack-protector-strong -fPIC \
          $(SANFLAGS) -Icommon -Igateway -I$(GEN) $(PQ_CFLAGS) -MMD -MP
LDFLAGS := $(SANFLAGS) -pie -Wl,-z,relro,-z,now
# libmicrohttpd and GnuTLS: every daemon's HTTPS metrics endpoint (common/cm_metrics_http.c)
LIBS := -lpaho-mqtt3as -lzmq -lprotobuf-c -lsqlite3 $(PQ_LIBS) -lssl -lcrypto -lgsl -lgslcblas -largon2 -loath \
        -lmicrohttpd -lgnutls -lpthread -lm

SERVICES := registry ingest verify profile anomaly archive gate monitor sparkplug
# libraries of one service only: the monitor reads and writes JSON (jansson)
LIBS_monitor := -ljansson

# suido's own messages, and the Sparkplug B payload (the Sparkplug host service decodes it)
PROTOS := suido sparkplug_b
PROTO_C := $(patsubst %,$(GEN)/%.pb-c.c,$(PROTOS))
PROTO_H := $(patsubst %,$(GEN)/%.pb-c.h,$(PROTOS))
COMMON_SRC := $(filter-out %_test.c,$(wildcard common/*.c))
COMMON_OBJ := $(patsubst %.c,$(OBJ)/%.o,$(COMMON_SRC)) $(patsubst %,$(OBJ)/gen/%.pb-c.o,$(PROTOS))
LIBCOMMON := $(BUILD)/libsuido-common.a
# The gateway library (gateway/gateway.h): the field agent and the simulator both drive it.
GATEWAY_SRC := $(filter-out %_test.c,$(wildcard gateway/*.c))
LIBGATEWAY := $(BUILD)/libsuido-gateway.a
# The field agent's own libraries: Modbus, and the sandbox (seccomp filter, capabilities)
LIBS_gateway := -lmodbus -lseccomp -lcap-ng

UNIT_SRC := $(wildcard common/*_test.c services/*/*_test.c gateway/*_test.c gateway/agent/*_test.c \
              gateway-sim/*_test.c broker/start/*_test.c tools/suidoctl/*_test.c)
UNIT_BIN := $(patsubst %.c,$(BUILD)/test/%,$(UNIT_SRC))

PROGRAMS := $(BIN)/suidoctl $(addprefix $(BIN)/suido-,$(SERVICES)) $(BIN)/suido-gateway \
            $(BIN)/suido-gateway-sim $(BIN)/suido-keygen \
            $(BIN)/suido-bench-sub $(BIN)/suido-bench-pub $(BIN)/suido-score \
            $(BIN)/suido-broker-start

# The Mosquitto plugin (broker/plugin/README.md): a shared object loaded by the broker, which
# provides the mosquitto_* symbols it uses; nothing else is linked. A stock mosquitto cannot load
# an ASan-instrumented object (the ASan runtime must come first), so with SAN=1 the plugin that
# the suite loads (lib/suido_plugin.so) has UBSan only, and lib/suido_plugin-asan.so has both, for
# LD_PRELOAD=$$(cc -print-file-name=libasan.so) mosquitto -c ... (see the plugin's README).
PLUGIN_SRC := $(wildcard broker/plugin/*.c)
PLUGIN_DEP := $(PLUGIN_SRC) $(wildcard broker/plugin/*.h)
PLUGIN := $(BUILD)/lib/suido_plugin.so
PLUGIN_LDFLAGS := -shared -Wl,-z,relro,-z,now
ifeq ($(SAN),1)
  PLUGIN_ASAN := $(BUILD)/lib/suido_plugin-asan.so
  PLUGIN_UBSAN := -fsanitize=undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
  PLUGIN_CFLAGS := $(filter-out $(SANFLAGS),$(CFLAGS)) $(PLUGIN_UBSAN)
else
  PLUGIN_ASAN :=
  PLUGIN_CFLAGS := $(CFLAGS)
endif

.PHONY: all deps build test test-unit test-integration test-asan run stop bench clean format
all: build
build: $(PROGRAMS) $(UNIT_BIN) $(PLUGIN) $(PLUGIN_ASAN)

$(PLUGIN): $(PLUGIN_DEP)
	@mkdir -p $(dir $@)
	$(CC) $(PLUGIN_CFLAGS) $(PLUGIN_LDFLAGS) -o $@ $(PLUGIN_SRC)

$(PLUGIN_ASAN): $(PLUGIN_DEP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PLUGIN_LDFLAGS) -o $@ $(PLUGIN_SRC)

deps:
	@scripts/install-deps.sh

$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: proto/%.proto
	@mkdir -p $(GEN)
	protoc-c --proto_path=proto --c_out=$(GEN) $<

$(OBJ)/gen/%.pb-c.o: $(GEN)/%.pb-c.c
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Werror -Wmissing-prototypes,$(CFLAGS)) -c $< -o $@

$(OBJ)/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIBCOMMON): $(COMMON_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(LIBGATEWAY): $(patsubst %.c,$(OBJ)/%.o,$(GATEWAY_SRC))
	@rm -f $@
	ar rcs $@ $^

define program
$(BIN)/suido-$(1): $(patsubst %.c,$(OBJ)/%.o,$(filter-out %_test.c,$(wildcard $(2)/*.c))) $(LIBCOMMON)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $$@ $$^ $(LIBS) $(LIBS_$(1))
endef
$(foreach s,$(SERVICES),$(eval $(call program,$(s),services/$(s))))

# the drivers of the gateway library
$(BIN)/suido-gateway-sim: $(patsubst %.c,$(OBJ)/%.o,$(filter-out %_test.c,$(wildcard gateway-sim/*.c))) $(LIBGATEWAY) $(LIBCOMMON)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)
$(BIN)/suido-gateway: $(patsubst %.c,$(OBJ)/%.o,$(filter-out %_test.c,$(wildcard gateway/agent/*.c))) $(LIBGATEWAY) $(LIBCOMMON)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -Wl,--as-needed -o $@ $^ $(LIBS) $(LIBS_gateway)
$(eval $(call program,keygen,tools/keygen))
$(eval $(call program,bench-sub,tools/bench-sub))
$(eval $(call program,bench-pub,tools/bench-pub))
$(eval $(call program,score,tools/score))
$(eval $(call program,broker-start,broker/start))

$(BIN)/suidoctl: $(patsubst %.c,$(OBJ)/%.o,$(filter-out %_test.c,$(wildcard tools/suidoctl/*.c))) $(LIBCOMMON)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

# A unit test links the objects of its module's directory (except main.c) and the common library.
.SECONDEXPANSION:
module_objs = $(if $(filter common/%,$(1)),,$(patsubst %.c,$(OBJ)/%.o,$(filter-out $(dir $(1))main.c %_test.c,$(wildcard $(dir $(1))*.c))))
$(BUILD)/test/%_test: $(OBJ)/%_test.o $$(call module_objs,$$*) $(LIBGATEWAY) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) $(LIBS_gateway) -lcmocka -ljansson

test: deps
	@$(MAKE) --no-print-directory build
	@scripts/run-tests.sh $(BUILD)

test-asan: deps
	@$(MAKE) --no-print-directory build SAN=1
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1 \
	  scripts/run-tests.sh build/san

run: deps
	@$(MAKE) --no-print-directory build
	@scripts/suite.sh run $(if $(DETACH),--detach)

stop:
	@scripts/suite.sh stop

# The field agent's CPU per polled point first (scripts/bench-gateway.sh), then the suite's
# throughput and latency (scripts/bench.sh, whose figures end the output).
bench: deps
	@$(MAKE) --no-print-directory build
	@scripts/bench-gateway.sh $(BUILD)
	@scripts/bench.sh $(BUILD)

.PHONY: bench-gateway
bench-gateway: deps
	@$(MAKE) --no-print-directory build
	@scripts/bench-gateway.sh $(BUILD)

# The fault plan (tests/faults/README.md); SUIDO_FAULTS_FULL=1 for its full durations and load.
.PHONY: test-faults
test-faults: deps
	@$(MAKE) --no-print-directory build
	@SUIDO_BUILD=$(abspath $(BUILD)) /usr/bin/python3 tests/faults/run.py

# Container images from Debian packages and this build (compose/README.md), and the suite as
# containers end to end: scaling, kills, isolation, 0 gaps (compose/tests/test_compose.py).
.PHONY: images test-compose
images: deps
	@$(MAKE) --no-print-directory build
	@compose/images.sh $(BUILD)

test-compose: images
	@SUIDO_BUILD=$(abspath $(BUILD)) /usr/bin/python3 -m pytest -p no:cacheprovider -q -rfE \
	  compose/tests/test_compose.py

# ------------------------------------------------------------------ fuzzing (fuzz/README.md)
# libFuzzer targets built with clang into $(BUILD_ROOT)/fuzz, from their own objects (the objects
# above are gcc's): every source a target needs is compiled again with fuzzer coverage, ASan and
# UBSan. `make fuzz` runs each target FUZZ_SECONDS on a scratch copy of its seed corpus;
# `make fuzz-smoke` runs each a few seconds and replays every fuzz/regressions/<target>/ file.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 300
FUZZ_SMOKE_SECONDS ?= 5
FUZZ := $(BUILD_ROOT)/fuzz
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Wno-missing-field-initializers \
               $(FUZZ_SAN) -Icommon -I$(FUZZ)/gen $(PQ_CFLAGS) -MMD -MP
# every proto of the main build (PROTOS), generated and compiled again for the targets
FUZZ_PROTO_H := $(patsubst %,$(FUZZ)/gen/%.pb-c.h,$(PROTOS))
FUZZ_COMMON_OBJ := $(patsubst %.c,$(FUZZ)/obj/%.o,$(COMMON_SRC)) \
                   $(patsubst %,$(FUZZ)/obj/gen/%.pb-c.o,$(PROTOS))
FUZZ_TARGETS := verify proto conf profile history monitor persist broker_log backup_manifest \
                pointmap sparkplug
# the project sources each target needs besides common/ (its -I follows from them)
FUZZ_SRC_verify := services/verify/verify_check.c
FUZZ_SRC_proto := services/archive/archive_store.c services/archive/archive_query.c \
                  services/archive/archive_cases.c services/gate/gate_check.c
FUZZ_SRC_history := services/anomaly/history.c
FUZZ_SRC_monitor := services/monitor/mon_body.c services/monitor/mon_text.c
FUZZ_SRC_persist := broker/start/persist_check.c
FUZZ_SRC_broker_log := services/ingest/broker_log.c
FUZZ_SRC_backup_manifest := tools/suidoctl/backup_manifest.c
FUZZ_SRC_pointmap := gateway/agent/pointmap.c
FUZZ_SRC_sparkplug := services/sparkplug/spb_host.c services/sparkplug/spb_map.c
FUZZ_LIBS_monitor := -ljansson
FUZZ_BINS := $(addprefix $(FUZZ)/bin/fuzz_,$(FUZZ_TARGETS))

.PHONY: fuzz-build fuzz fuzz-smoke
fuzz-build: $(FUZZ_BINS) $(FUZZ)/bin/seed_verify

# kept after the build (not deleted as intermediate files), so that objects are not rebuilt
.SECONDARY: $(FUZZ_PROTO_H) $(patsubst %,$(FUZZ)/gen/%.pb-c.c,$(PROTOS))
$(FUZZ)/gen/%.pb-c.c $(FUZZ)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(FUZZ)/gen
	protoc-c --proto_path=proto --c_out=$(FUZZ)/gen $<

$(FUZZ)/obj/gen/%.pb-c.o: $(FUZZ)/gen/%.pb-c.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ)/obj/%.o: %.c $(FUZZ_PROTO_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(foreach f,$(FUZZ_SRC_$(notdir $*)),-I$(dir $(f))) -c $< -o $@

define fuzz_target
$(FUZZ)/bin/fuzz_$(1): $(FUZZ)/obj/fuzz/$(1).o $(patsubst %.c,$(FUZZ)/obj/%.o,$(FUZZ_SRC_$(1))) $(FUZZ_COMMON_OBJ)
	@mkdir -p $(FUZZ)/bin
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $$@ $$^ $(LIBS) $(FUZZ_LIBS_$(1))
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call fuzz_target,$(t))))

# The seed maker of the verify target (fuzz/seed_verify.c): a plain program, run once by hand.
FUZZ_SRC_seed_verify := $(FUZZ_SRC_verify)
$(FUZZ)/bin/seed_verify: $(FUZZ)/obj/fuzz/seed_verify.o $(FUZZ_COMMON_OBJ)
	@mkdir -p $(FUZZ)/bin
	$(FUZZ_CC) $(FUZZ_SAN) -o $@ $^ $(LIBS)

fuzz: fuzz-build
	@scripts/fuzz.sh $(FUZZ) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: fuzz-build
	@FUZZ_REPLAY=1 scripts/fuzz.sh $(FUZZ) $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf build

-include $(shell find $(BUILD_ROOT) -name '*.d' 2>/dev/null)
