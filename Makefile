# The two user-facing commands are `make run` and `make test`; the rest are helpers.
#   make run           install missing packages, build release, start sluice serve
#   make demo          the README's worked example of decisions (sluice eval)
#   make test          install missing packages, check formatting, then build and test
#                      release, asan and tsan (each fuzz target's corpus is a ctest test)
#   make build         build the release preset
#   make bench         build release and run the benchmarks (BENCH_ARGS=... passes flags)
#   make bench-redis   build release; Redis store vs redis-benchmark vs the reference
#                      (OLD_SLUICE=...: and batched scripts vs an older build, side by side)
#   make bench-deny-cache build release; a hot key on Redis, the deny cache off and on
#   make bench-server  build release; sluice serve vs nginx under wrk
#   make bench-cluster build release; the Redis Cluster store vs a single Redis
#   make bench-python  build release; the Python module vs the reference and sluice bench
#   make bench-grpc    build release; sluice serve's gRPC (Envoy RLS) vs HTTP and the library
#   make bench-io-threads build release; sluice serve with 2 I/O threads vs 1 (CPU per request)
#   make bench-serve-redis build release; sluice serve on Redis vs sluice bench on the same Redis
#   make chaos         build sluice; the chaos soak on a Redis Cluster, then behind Sentinel
#                      (CHAOS_SECONDS each, CHAOS_SEED)
#   make fuzz          build the libFuzzer targets with clang, run each FUZZ_SECONDS (60)
#   make format        clang-format every C++ file in place
#   make format-check  fail if any C++ file is not clang-formatted
#   make clean         remove build/
# Builds use the presets in CMakePresets.json, in build/<preset>, at most 2 jobs.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := run

PRESETS := release debug asan tsan
TEST_PRESETS := release asan tsan
FORMAT_DIRS := include src tests benchmarks fuzz
FUZZ_SECONDS ?= 60
CHAOS_SECONDS ?= 60
CHAOS_SEED ?= 1

export ASAN_OPTIONS := detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS := print_stacktrace=1:halt_on_error=1
# The gRPC tests link Debian's gRPC, built without TSan: tests/tsan_suppressions.txt says why.
export TSAN_OPTIONS := halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/tsan_suppressions.txt

.PHONY: run test build build-cli bench bench-redis bench-deny-cache bench-server bench-cluster bench-python bench-grpc bench-io-threads bench-serve-redis chaos fuzz deps format format-check clean \
	$(addprefix build-,$(PRESETS)) $(addprefix test-,$(PRESETS))

# SLUICE_DEPS_DONE is set for the sub-makes of `test`, which checked the packages already.
deps:
	@[[ -n "$${SLUICE_DEPS_DONE:-}" ]] || bash scripts/install-deps.sh

# Configure only when the build tree is missing or the presets changed; after that Ninja
# re-runs CMake by itself when a CMakeLists.txt changes. ccache is used when it is installed
# and its cache directory is writable (a user without a home directory builds without it).
build/%/build.ninja: CMakePresets.json | deps
	@launcher=$$(command -v ccache || true); \
	if [[ -n $$launcher ]]; then \
	  dir=$$(ccache -k cache_dir 2>/dev/null || true); \
	  if ! { [[ -n $$dir ]] && mkdir -p "$$dir" 2>/dev/null && [[ -w $$dir ]]; }; then \
	    echo "ccache: cache directory '$$dir' is not writable; building without ccache"; \
	    launcher=; \
	  fi; \
	fi; \
	cmake --preset $* $${launcher:+-DCMAKE_CXX_COMPILER_LAUNCHER=$$launcher}
	@touch $@

$(addprefix build-,$(PRESETS)): build-%: build/%/build.ninja
	cmake --build --preset $*

build: build-release

# Only the program `make run` starts, not the tests and benchmarks.
build-cli: build/release/build.ninja
	cmake --build --preset release --target sluice_cli

# The main job: the decision server on the embedded memory store, with the example
# config, until Ctrl-C. It prints how to call it first.
run: build-cli
	@echo "sluice serve --config examples/sluice.yaml (memory store); try, in another shell:"
	@echo "  curl -s -XPOST localhost:8080/v1/acquire -d '{\"key\":\"user:42\",\"policy\":\"chat\"}'"
	@echo "  curl -si localhost:8080/v1/gate/api -H 'X-Forwarded-For: 10.0.0.1'"
	@echo "  curl -s localhost:8080/metrics"
	@echo "Ctrl-C stops it (in-flight requests finish first)."
	exec ./build/release/sluice serve --config examples/sluice.yaml

# A short demo of decisions on the embedded store, with a manual clock (README's example).
demo: build-cli
	./build/release/sluice eval --now 0s --echo examples/demo.eval

bench: build-release
	./build/release/benchmarks/sluice_benchmark $(BENCH_ARGS)

# One run of benchmarks/redis_compare.sh on a private redis-server; see docs/BENCHMARKS.md.
# With OLD_SLUICE=<a sluice built before batching>, then benchmarks/batch_compare.sh: old vs
# new side by side over ROUNDS rounds (docs/BENCHMARKS.md, "Batched scripts").
bench-redis: build-release
	SLUICE=./build/release/sluice bash benchmarks/redis_compare.sh
	@if [[ -n "$${OLD_SLUICE:-}" ]]; then \
	  SLUICE=./build/release/sluice bash benchmarks/batch_compare.sh; \
	else echo "(set OLD_SLUICE=... to compare with a build from before batching)"; fi

# One run of benchmarks/deny_cache_compare.sh on a private redis-server; see docs/BENCHMARKS.md.
bench-deny-cache: build-cli
	SLUICE=./build/release/sluice bash benchmarks/deny_cache_compare.sh

# One run of benchmarks/server_compare.sh: nginx `return 204` vs sluice serve, under wrk.
bench-server: build-release
	SLUICE=./build/release/sluice bash benchmarks/server_compare.sh

# One run of benchmarks/python_bench.py: sluice.compat vs the reference, Limiter.acquire on
# the memory store, acquire_async vs `sluice bench` on Redis (docs/BENCHMARKS.md, "Python").
bench-python: build-release
	PYTHONPATH=build/release/python /usr/bin/python3 benchmarks/python_bench.py \
	  --sluice build/release/sluice --reference-dir ../shared/reference $(BENCH_ARGS)

# One run of benchmarks/cluster_compare.sh: a 3-master Redis Cluster vs one redis-server.
bench-cluster: build-release
	SLUICE=./build/release/sluice bash benchmarks/cluster_compare.sh

# One run of benchmarks/grpc_compare.sh: gRPC ShouldRateLimit vs HTTP POST /v1/acquire (server
# CPU per decision, memory store) and vs the library on a private Redis (docs/BENCHMARKS.md,
# "gRPC (Envoy's rate limit service)"). ROUNDS=..., BENCH_SECONDS=... pass through.
bench-grpc: build-release
	SLUICE=./build/release/sluice bash benchmarks/grpc_compare.sh

# One run of benchmarks/io_threads_compare.sh: sluice serve --io-threads 2 vs 1 on the memory
# store, server CPU per request (docs/BENCHMARKS.md, "Memory store across cores").
bench-io-threads: build-release
	SLUICE=./build/release/sluice bash benchmarks/io_threads_compare.sh

bench-serve-redis: build-release
	SLUICE=./build/release/sluice bash benchmarks/serve_redis_compare.sh

# The chaos soak (benchmarks/chaos/chaos.py; docs/BENCHMARKS.md, "Chaos soak"): sluice serve
# on a 3+3 Redis Cluster under load while masters are killed and paused, nodes restarted,
# slots resharded and the server restarted; then on one Redis behind Sentinel, failed over.
# Every decision checked; non-zero on a violation. The records and reports go to
# build/chaos-<seed> and build/chaos-sentinel-<seed>; CHAOS_ARGS=... passes more flags.
chaos: build-cli
	/usr/bin/python3 benchmarks/chaos/chaos.py --duration $(CHAOS_SECONDS) --seed $(CHAOS_SEED) \
	  --sluice build/release/sluice --out build/chaos-$(CHAOS_SEED) $(CHAOS_ARGS)
	/usr/bin/python3 benchmarks/chaos/chaos.py --duration $(CHAOS_SECONDS) --seed $(CHAOS_SEED) \
	  --round sentinel --sluice build/release/sluice --out build/chaos-sentinel-$(CHAOS_SEED) \
	  $(CHAOS_ARGS)

# TSan needs the low-entropy address layout it was built for; `setarch -R` turns ASLR
# off for the tests (harmless when the kernel's layout is already fine).
NO_ASLR = $$(setarch $$(uname -m) -R true 2>/dev/null && echo setarch $$(uname -m) -R)

$(addprefix test-,$(PRESETS)): test-%: build-%
	@mkdir -p build/$*
	@set +e; \
	if [[ $* == tsan ]]; then wrap="$(NO_ASLR)"; else wrap=; fi; \
	echo "$${wrap:+$$wrap }ctest --preset $*"; \
	$$wrap ctest --preset $* 2>&1 | tee build/$*/ctest.log; \
	exit $${PIPESTATUS[0]}

# Runs every stage even when one fails, then prints one line per stage and the total
# (a stage that did not get as far as ctest counts as one failed test; unformatted code
# fails the run too).
test: deps
	@export SLUICE_DEPS_DONE=1; failed=0; summary=(); \
	echo "=== make test: format-check"; \
	fmt_failed=0; \
	if $(MAKE) --no-print-directory format-check; then summary+=("format-check: passed"); \
	else summary+=("format-check: FAILED (run make format)"); failed=1; fmt_failed=1; fi; \
	for p in $(TEST_PRESETS); do \
	  rm -f build/$$p/ctest.log; start=$$(date +%s); \
	  echo "=== make test: $$p"; \
	  if $(MAKE) --no-print-directory test-$$p; then status=passed; \
	  elif [[ -f build/$$p/ctest.log ]]; then status="FAILED (tests)"; failed=1; \
	  else status="FAILED (configure or build)"; failed=1; fi; \
	  summary+=("$$p: $$status in $$(( $$(date +%s) - start ))s"); \
	done; \
	echo "=== make test summary"; printf '  %s\n' "$${summary[@]}"; \
	passed=0; fails=$$fmt_failed; \
	for p in $(TEST_PRESETS); do \
	  line=$$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' \
	          build/$$p/ctest.log 2>/dev/null | tail -n 1 || true); \
	  if [[ $$line =~ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then \
	    fails=$$(( fails + BASH_REMATCH[1] )); \
	    passed=$$(( passed + BASH_REMATCH[2] - BASH_REMATCH[1] )); \
	  else \
	    fails=$$(( fails + 1 )); \
	  fi; \
	done; \
	echo "total: $$passed passed, $$fails failed"; \
	exit $$failed

# libFuzzer needs clang; each target starts from a copy of its seed corpus in fuzz/corpus.
# Every library is built with coverage instrumentation (fuzzer-no-link), so libFuzzer sees
# the branches of the code under test, not only of the target's own file.
fuzz: deps
	@[[ -f build/fuzz/build.ninja ]] || CXX=clang++ cmake -S . -B build/fuzz -G Ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_BUILD_FUZZERS=ON -DSLUICE_BUILD_TESTS=OFF \
	  -DSLUICE_BUILD_BENCHMARKS=OFF -DSLUICE_WITH_GRPC=OFF \
	  "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link,address,undefined"
	cmake --build build/fuzz -j2
	@for t in limit algorithms eval redis body snapshot config http; do \
	  mkdir -p build/fuzz/corpus/$$t && cp -n fuzz/corpus/$$t/* build/fuzz/corpus/$$t/; \
	  echo "=== fuzz_$$t for $(FUZZ_SECONDS)s"; \
	  ./build/fuzz/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    build/fuzz/corpus/$$t 2>&1 | grep -E '^(stat::number_of_executed_units|Done|==)' ; \
	done

format:
	find $(wildcard $(FORMAT_DIRS)) \( -name '*.h' -o -name '*.cc' \) -print0 \
	  | xargs -0 -r clang-format -i

format-check:
	find $(wildcard $(FORMAT_DIRS)) \( -name '*.h' -o -name '*.cc' \) -print0 \
	  | xargs -0 -r clang-format --dry-run --Werror

clean:
	rm -rf build
