# gpuquant: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := build/demo

.PHONY: install demo test lint bench fuzz gpu-test gpu-test-sim reference reference-record clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,report,progress,ray]'
	touch $@

# The main job on a built-in synthetic model with parler-tts-mini's real layout (2 decoder layers),
# with its report (per-tensor error, plots): the summary ends with the report's paths.
demo: install
	mkdir -p $(DEMO)
	$(BIN)/gpuquant synth parler-tts-mini $(DEMO)/parler-tts-mini-2layers-f32.gguf --layers 2
	$(BIN)/gpuquant quantize -mp $(DEMO)/parler-tts-mini-2layers-f32.gguf \
		-qp $(DEMO)/parler-tts-mini-2layers-q4_0.gguf -qt Q4_0 -nt 2 \
		--report $(DEMO)/parler-tts-mini-2layers-q4_0.html --report $(DEMO)/parler-tts-mini-2layers-q4_0.json

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check gpuquant tests benchmarks

# 100,000 damaged GGUF files through the CLI (tests/fuzz_gguf.py; the suite runs 500).
fuzz: install
	$(BIN)/python tests/fuzz_gguf.py 100000

# Heavy measurements (full-size models, throughput ratios): never part of the tests.
bench: install
	$(BIN)/python benchmarks/run.py
	@if [ -x build/reference/llama-perplexity ]; then $(BIN)/python benchmarks/target_quality.py; \
	else echo "target size quality (KLD) skipped: make reference builds llama-perplexity and llama-imatrix"; fi

# llama-quantize and ggml's quantizers built from llama-cpp-python 0.3.36 (llama.cpp 3aa0ce9), then
# every recorded run made afresh by both tools and compared file by file (minutes; never a test).
reference: install
	PYTHON=$(BIN)/python bash benchmarks/build_reference.sh
	$(BIN)/python benchmarks/llama_reference.py compare --llama-quantize build/reference/llama-quantize

# Rewrites tests/data/llama_reference.json from the reference binary.
reference-record: install
	PYTHON=$(BIN)/python bash benchmarks/build_reference.sh
	$(BIN)/python benchmarks/llama_reference.py record --llama-quantize build/reference/llama-quantize

# For a GPU machine that already has CuPy, NumPy and click (gguf may come as a local wheel):
# no install step, no downloads.
gpu-test:
	PYTHONPATH=$(CURDIR):$$PYTHONPATH $(PYTHON) benchmarks/gpu_test.py

# The same script end to end on the CUDA simulator (no GPU, no CuPy; a C++ compiler): small sizes,
# the simulator's speeds. CI runs it too (tests/test_gpu_test_rehearsal.py).
gpu-test-sim: install
	$(BIN)/python benchmarks/gpu_test.py --simulator

clean:
	rm -rf build $(VENV) .pytest_cache .ruff_cache
