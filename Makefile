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

.PHONY: install models engines serve lint test test-unit bench bench-peers bench-serving soak clean-engines

# The venv is rebuilt when the declared dependencies change.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[export,test]'
	touch $(STAMP)

install: $(STAMP)

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

test: lint
	$(PY) -m pytest tests

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
