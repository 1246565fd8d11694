# Two commands do all set-up on a fresh machine (see README.md):
#   make serve   venv + install + default models + default engines, then the server
#   make test    venv + install + the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APPLIANCE := $(VENV)/bin/appliance
STAMP := $(VENV)/.installed-export-test
ENGINES := engines
DECODER := $(ENGINES)/smollm2-135m-instruct-fp32
ENCODER := $(ENGINES)/all-minilm-l6-v2

.PHONY: install models engines serve test test-unit bench clean-engines

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
	$(APPLIANCE) export smollm2-135m-instruct --precision fp32 --out $(DECODER)

$(ENCODER)/manifest.json: | models
	$(APPLIANCE) export all-minilm-l6-v2 --out $(ENCODER)

engines: $(DECODER)/manifest.json $(ENCODER)/manifest.json

serve: engines
	@echo "Default engines are ready: $(DECODER) and $(ENCODER)."
	@echo "The HTTP server (appliance serve: OpenAI and Ollama APIs) is not built yet; it lands with issue 4."

test: $(STAMP)
	$(PY) -m pytest tests

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit tests/api

bench: engines
	$(PY) bench/decode_speed.py $(DECODER)

clean-engines:
	rm -rf $(DECODER) $(ENCODER)
