# Raftport build. `make` builds build/raftport, build/tctl, build/tsh.
# `make test` installs what is missing, builds, and runs every test.
# `make demo` starts a local 3-node auth cluster; `make demo-stop` stops it.

CC       ?= cc
BUILD    ?= build
PKGS     := raft libuv openssl lmdb msgpack yaml-0.1 libargon2 libssh libzstd libnghttp2 libcurl libqrencode jansson
DEPS_OK  := $(shell scripts/install-deps.sh >&2 && echo ok)
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN     := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wstrict-prototypes
CFLAGS   ?= -O2 -g
ALL_CFLAGS := -std=gnu11 $(WARN) $(CFLAGS) $(EXTRA_CFLAGS) -D_GNU_SOURCE -I. $(PKG_CFLAGS)
LDLIBS   := $(PKG_LIBS) -lhttp_parser -lpthread
TEST_LIBS := -lcriterion

LIB_SRCS := $(wildcard lib/*.c raft/*.c state/*.c auth/*.c proxy/*.c agent/*.c tsh/*.c)
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
TOOLS    := $(BUILD)/raftport $(BUILD)/tctl $(BUILD)/tsh $(BUILD)/rpbench $(BUILD)/sshd-fixture $(BUILD)/tunnel-load
TESTLIB_SRCS := $(wildcard tests/lib/*.c)
TESTLIB_OBJS := $(TESTLIB_SRCS:%.c=$(BUILD)/obj/%.o)
TEST_SRCS := $(wildcard tests/test_*.c)
TESTS    := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
# jepsen/: checkers and harness in build/libjepsen.a; each jepsen/main_NAME.c is the
# program build/jepsen-NAME (e.g. main_check.c -> build/jepsen-check).
JEPSEN_LIB_SRCS := $(filter-out jepsen/main_%.c,$(wildcard jepsen/*.c))
JEPSEN_LIB_OBJS := $(JEPSEN_LIB_SRCS:%.c=$(BUILD)/obj/%.o)
JEPSEN_PROGS := $(patsubst jepsen/main_%.c,$(BUILD)/jepsen-%,$(wildcard jepsen/main_*.c))

.PHONY: all test asan demo demo-stop clean format
# Keep the objects of tools and tests (make would delete them as intermediates).
.PRECIOUS: $(BUILD)/obj/%.o
all: $(TOOLS) $(JEPSEN_PROGS) $(BUILD)/raftport-stale $(TESTS)

# V=1 shows the full command lines.
Q := $(if $(V),,@)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libraftport.a: $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/%: $(BUILD)/obj/tools/%.o $(BUILD)/libraftport.a
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libraftport.a $(LDLIBS)

# tsh links its own objects directly: tools/tsh.c has weak definitions of the commands
# (for a build without some part of tsh), and an archive member is never pulled in to
# replace a weak definition.
TSH_OBJS := $(filter $(BUILD)/obj/tsh/%,$(LIB_OBJS))
# tools/tsh_io.c defines poll/recv/send (tsh/tlsfd.h): it is linked into build/tsh
# alone, never archived.
$(BUILD)/tsh: $(BUILD)/obj/tools/tsh.o $(BUILD)/obj/tools/tsh_io.o $(TSH_OBJS) $(BUILD)/libraftport.a
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/obj/tools/tsh_io.o $(TSH_OBJS) $(BUILD)/libraftport.a $(LDLIBS)

# A test-only daemon whose followers answer reads without asking the leader: the
# Jepsen harness must report it non-linearizable (tests/test_jepsen_smoke.c).
$(BUILD)/obj/stale/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $< (stale reads)")
	$(Q)$(CC) $(ALL_CFLAGS) -DRP_TEST_STALE_READS -MMD -MP -c $< -o $@

$(BUILD)/raftport-stale: $(BUILD)/obj/stale/tools/raftport.o $(BUILD)/obj/stale/auth/store_api.o $(BUILD)/libraftport.a
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libjepsen.a: $(JEPSEN_LIB_OBJS)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/jepsen-%: $(BUILD)/obj/jepsen/main_%.o $(BUILD)/libjepsen.a $(BUILD)/libraftport.a
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libjepsen.a $(BUILD)/libraftport.a $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TESTLIB_OBJS) $(BUILD)/libjepsen.a $(BUILD)/libraftport.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(TESTLIB_OBJS) $(BUILD)/libjepsen.a $(BUILD)/libraftport.a $(LDLIBS) $(TEST_LIBS)

# ---- fuzz targets (docs/fuzzing.md) -------------------------------------------------
# Every tests/fuzz/fuzz_NAME.c is a libFuzzer target. `make fuzz` builds each with clang
# into build-fuzz/ and runs it; `make test` replays their corpora through
# $(BUILD)/tests/test_fuzz_replay, built like any test with $(CC): each target compiled
# again with its entry points renamed and one Criterion test added (tests/fuzz/replay.h).
FUZZ_SRCS  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES := $(FUZZ_SRCS:tests/fuzz/fuzz_%.c=%)
FUZZ_REPLAY_OBJS := $(FUZZ_NAMES:%=$(BUILD)/obj/tests/fuzz/replay_%.o)

$(BUILD)/obj/tests/fuzz/replay_%.o: tests/fuzz/fuzz_%.c tests/fuzz/replay.h
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $< (replay)")
	$(Q)$(CC) $(ALL_CFLAGS) -include tests/fuzz/replay.h -DFUZZ_NAME=$* \
	  -DLLVMFuzzerTestOneInput=fuzz_$*_one -DLLVMFuzzerInitialize=fuzz_$*_init -MMD -MP -c $< -o $@

$(BUILD)/tests/test_fuzz_replay: $(BUILD)/obj/tests/test_fuzz_replay.o $(FUZZ_REPLAY_OBJS) $(TESTLIB_OBJS) $(BUILD)/libjepsen.a $(BUILD)/libraftport.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(FUZZ_REPLAY_OBJS) $(TESTLIB_OBJS) $(BUILD)/libjepsen.a $(BUILD)/libraftport.a $(LDLIBS) $(TEST_LIBS)

# The libFuzzer binaries (only with BUILD=build-fuzz CC=clang, as `make fuzz` calls it).
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/check.h $(BUILD)/libjepsen.a $(BUILD)/libraftport.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZ    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -fsanitize=fuzzer -o $@ $< $(BUILD)/libjepsen.a $(BUILD)/libraftport.a $(LDLIBS)

# FUZZ_SECONDS per target; FUZZ_TARGETS picks some (default: all). A crash or a leak
# leaves its input in tests/fuzz/crashes/NAME/ and fails. The corpus in the repository
# is only read; `make fuzz-merge` adds what the last run found that adds coverage.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_BUILD   := build-fuzz
# UBSan checks stay recoverable so that tests/fuzz/pending.supp can silence bugs that are
# known and not fixed yet; scripts/fuzz.sh makes every other report fatal (halt_on_error).
FUZZ_CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
.PHONY: fuzz fuzz-build fuzz-merge
fuzz-build:
	@scripts/install-deps.sh fuzz
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=clang CFLAGS="$(FUZZ_CFLAGS)" \
	  $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz/fuzz_%)

fuzz: fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh run $(FUZZ_BUILD) $(FUZZ_TARGETS)

fuzz-merge: fuzz-build
	@scripts/fuzz.sh merge $(FUZZ_BUILD) $(FUZZ_TARGETS)

# Each test binary runs on its own; integration tests find the daemons in $(BUILD).
test: all
	@RP_BUILD=$(abspath $(BUILD)) scripts/run-tests.sh $(TESTS)

asan:
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

# Fault injection: every workload with every nemesis and with all of them mixed, then
# the stale-read daemon, which must be caught. Needs root. Results in jepsen/store/;
# docs/jepsen.md. JEPSEN_WORKLOADS / JEPSEN_NEMESES pick a subset.
JEPSEN_TIME  ?= 60
JEPSEN_RATE  ?= 100
JEPSEN_NODES ?= 5
JEPSEN_SEED  ?= $(shell date +%s)
.PHONY: jepsen
jepsen: all
	@BUILD=$(BUILD) JEPSEN_TIME=$(JEPSEN_TIME) JEPSEN_RATE=$(JEPSEN_RATE) JEPSEN_NODES=$(JEPSEN_NODES) \
	  JEPSEN_SEED=$(JEPSEN_SEED) scripts/jepsen-matrix.sh

# Raftport beside etcd 3.4 on this machine, about 12 minutes; not part of `make test`.
# Installs etcd-server, etcd-client, golang-go and golang-etcd-server-dev when missing
# and writes bench/results/<date>/ (report.md, plot.svg, a JSON file per cell):
# docs/benchmarks.md. A smoke run: BENCH_SECONDS=2 BENCH_REPEAT=1 make bench.
.PHONY: bench
bench: $(BUILD)/raftport $(BUILD)/tctl $(BUILD)/rpbench
	@BUILD=$(BUILD) scripts/bench.sh

# The node's SSH server beside stock sshd (scripts/bench-ssh.sh says what is measured).
.PHONY: bench-ssh
bench-ssh: $(BUILD)/raftport $(BUILD)/tctl $(BUILD)/tsh $(BUILD)/sshd-fixture $(BUILD)/tunnel-load
	@BUILD=$(BUILD) scripts/bench-ssh.sh

demo: all
	@scripts/demo.sh start

demo-stop:
	@scripts/demo.sh stop

format:
	clang-format -i $(wildcard */*.c */*.h tests/lib/*.c tests/lib/*.h tests/fuzz/*.c tests/fuzz/*.h)

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
