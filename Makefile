# Two commands do all set-up on a fresh machine (see README.md):
#   make serve   venv + install + default models + default engines, then the server
#   make test    venv + install + lint and type checks + the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APPLIANCE := $(VENV)/bin/appliance
STAMP := $(VENV)/.installed-export-test
ENGINES := engines
# The default decoder: int4, the GGUF's own Q4_1 blocks carried over exactly (top-1 agreement
# with the fp32 engine 0.96; docs/performance.md has the measurements behind the choice).
DECODER := $(ENGINES)/smollm2-135m-instruct-int4
ENCODER := $(ENGINES)/all-minilm-l6-v2

.PHONY: install install-gpu gpu-check models engines serve lint browser claude-code test test-unit bench bench-peers bench-serving bench-size soak clean-engines

# The venv is rebuilt when the declared dependencies change.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[export,test,ray]'
	touch $(STAMP)

install: $(STAMP)

# GPU machines: a venv of its own, with onnxruntime-gpu (CUDA and TensorRT providers, and the
# CUDA/cuDNN libraries from NVIDIA's wheels) and TensorRT. Both onnxruntime wheels provide the
# `onnxruntime` module, and the serving dependencies pull the CPU one: it is removed and the
# GPU wheel put back whole, so the GPU build is the one that imports.
GPU_VENV := .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed-gpu
$(GPU_STAMP): setup.cfg pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -e '.[export,test,gpu,tensorrt]'
	$(GPU_VENV)/bin/python -m pip uninstall --quiet -y onnxruntime
	$(GPU_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps 'onnxruntime-gpu>=1.22,<2'
	touch $@

install-gpu: $(GPU_STAMP)

# The GPU engines end to end (bench/gpu_check.py): fp16 CUDA and TensorRT exports with parity on
# the GPU, the CUDA kernel check, the serving benchmark at 1/8/32 streams, one summary table.
# Without an NVIDIA GPU it runs what needs none in the CPU venv and exits 77 saying so.
gpu-check:
	@if test -e /dev/nvidiactl; then $(MAKE) --no-print-directory install-gpu && $(GPU_VENV)/bin/python bench/gpu_check.py; \
	else echo "gpu-check: no NVIDIA GPU here (no /dev/nvidiactl): the steps that need none run in the CPU venv"; \
	$(MAKE) --no-print-directory install && $(PY) bench/gpu_check.py; fi

models: $(STAMP)
	$(APPLIANCE) pull smollm2-135m-instruct all-minilm-l6-v2

# An engine directory appears only complete (export writes elsewhere, then renames).
$(DECODER)/manifest.json: | models
	$(APPLIANCE) export smollm2-135m-instruct --precision int4 --out $(DECODER)

$(ENCODER)/manifest.json: | models
	$(APPLIANCE) export all-minilm-l6-v2 --out $(ENCODER)

engines: $(DECODER)/manifest.json $(ENCODER)/manifest.json

# Serves every engine under engines/ on http://127.0.0.1:8000 (README: curl examples).
# Arguments pass through: make serve SERVE_ARGS="--host 0.0.0.0 --api-key-file keys.txt --workers 2"
SERVE_ARGS ?=
serve: engines
	$(APPLIANCE) serve --engines $(ENGINES) $(SERVE_ARGS)

# Lint and type checks (configured in pyproject.toml and setup.cfg); `make test` runs them first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Chromium for the chat page's browser test (tests/integration/test_chat_page.py), from Debian's
# packages; Playwright drives it (`playwright install` fetches browsers from a CDN this box may
# not reach). Installed only when missing, and never fails the build: without apt-get or root
# the browser test skips and says why.
CHROMIUM := /usr/bin/chromium
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo -n) apt-get
browser:
	@test -x $(CHROMIUM) || { command -v apt-get >/dev/null && \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq chromium fonts-dejavu-core; } \
		|| echo "warning: chromium could not be installed (needs apt-get and root); the browser test will skip"

# Claude Code, the npm CLI, for the test that points it at the server
# (tests/integration/test_anthropic_server.py), pinned and kept in .tools/ (git-ignored).
# Installed only when missing, and never fails the build: without node or the npm registry
# the test skips and says why.
CLAUDE_CODE_VERSION := 2.1.197
CLAUDE_CODE := .tools/claude-code/node_modules/.bin/claude
claude-code:
	@test -x $(CLAUDE_CODE) || { command -v npm >/dev/null && \
		timeout 600 npm install --prefix .tools/claude-code --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION); } \
		|| echo "warning: Claude Code could not be installed (needs node, npm and its registry); its test will skip"

# -rs: say why each skipped test skipped (no chromium, no GPU, ...).
test: lint browser claude-code
	$(PY) -m pytest -rs tests

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit tests/api

# Benchmarks. Peers live in bench/peers/ (git-ignored), never in the test path.
# onnxruntime-genai gets its own environment: its model builder needs transformers 5,
# which the optimum exporter of our export extra does not accept. Same onnxruntime as ours.
PEERS := bench/peers
GENAI_STAMP := $(PEERS)/genai-venv/.installed

$(GENAI_STAMP):
	mkdir -p $(PEERS)
	test -x $(PEERS)/genai-venv/bin/python || $(PYTHON) -m venv $(PEERS)/genai-venv
	$(PEERS)/genai-venv/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/genai-venv/bin/python -m pip install --quiet onnxruntime-genai==0.18.0 onnxruntime==1.31.1 \
		torch==2.13.0 transformers==5.23.0 onnx==1.23.2 onnx-ir==1.1.0 safetensors numpy
	touch $@

# llama.cpp's own llama-server, from the sources inside the llama-cpp-python sdist (about 10 minutes).
LLAMA_SERVER := $(PEERS)/llama.cpp/bin/llama-server
$(LLAMA_SERVER):
	PYTHON=$(PYTHON) bash bench/build_llama_server.sh

bench-peers: $(GENAI_STAMP) $(LLAMA_SERVER)

# `appliance bench`: our server and every installed peer through HTTP, one run (README: Benchmarks).
bench-serving: engines
	$(APPLIANCE) bench --json $(PEERS)/serving.json

# The same serving phases at a real size: a generated GGUF of Llama-3.2-1B's shapes (random
# blocks, SmolLM2's tokenizer; bench/random_gguf.py, about 30 s), exported to int4 once (about
# 7 minutes, kept under bench/peers/engines-1b/), ours against llama-server on that file.
bench-size: models $(LLAMA_SERVER)
	$(APPLIANCE) bench --size 1b --skip default --json $(PEERS)/serving-1b.json

bench: engines
	$(PY) bench/decode_speed.py $(DECODER)
	$(PY) bench/api_overhead.py $(DECODER)
	$(APPLIANCE) bench --json $(PEERS)/serving.json

# Soak: 64 streaming clients for 5 minutes against a real server with an API key, mixing chat,
# completions, Ollama chat, embeddings and cancellations (loopback only; stops by itself).
# Not part of `make test`; docs/reliability.md has a run.
SOAK_KEYS := $(PEERS)/soak-api-keys
soak: engines
	mkdir -p $(PEERS)
	umask 077 && $(PY) -c "import secrets; print('sk-soak-' + secrets.token_hex(24))" > $(SOAK_KEYS)
	$(PY) bench/soak.py --engines $(ENGINES) --clients 64 --duration 300 --api-key-file $(SOAK_KEYS) --json $(PEERS)/soak.json

clean-engines:
	rm -rf $(DECODER) $(ENCODER) $(ENGINES)/smollm2-135m-instruct-fp32
