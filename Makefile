# Quick start: `make demo` (export the embedded MiniLM on the sample corpus) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: demo test setup bench clean

# chromium is order-only: checked on every `make setup`/`make test`, installed only when missing
$(STAMP): pyproject.toml constraints.txt package.json | $(CHROMIUM)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	# transformers.js for the JS-client tests; its postinstall would try a download, so skip it
	ONNXRUNTIME_NODE_INSTALL=skip npm ci --silent --no-audit --no-fund
	touch $(STAMP)

# Debian's chromium for tests/test_web_browser.py: Playwright drives it; Playwright's own browser download does not work here
$(CHROMIUM):
	@if [ "$$PEMA_SKIP_BROWSER" = 1 ]; then echo "make: PEMA_SKIP_BROWSER=1: not installing chromium; the browser tests skip"; \
	elif [ "$$(id -u)" != 0 ]; then echo "make: $(CHROMIUM) is missing and installing it needs root: sudo apt-get update && sudo apt-get install -y chromium (or set PEMA_SKIP_BROWSER=1)" >&2; exit 1; \
	else apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; fi

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pema-export --corpus samples/app_texts.txt --out build/demo/model.onnx

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build $(VENV) node_modules
