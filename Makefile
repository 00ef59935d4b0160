# Quick start: `make demo` (export the embedded MiniLM on the sample corpus) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: demo test setup bench clean versions

# What the code needs: Python 3.11 (tomllib; pyproject's requires-python) and, for the transformers.js tests,
# Node.js 20 (the version they are checked with). A wrong one fails here in one line, not deep in pip or a test.
PYTHON_MIN := 3.11
NODE_MIN := 20

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

versions:
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -c 'import sys; min = tuple(map(int, "$(PYTHON_MIN)".split("."))); sys.exit(sys.version_info[:2] < min)' 2>/dev/null \
		|| { echo "make: pema-export needs Python >= $(PYTHON_MIN) (it imports tomllib); $(if $(wildcard $(PY)),$(PY),$(PYTHON)) is $$($(if $(wildcard $(PY)),$(PY),$(PYTHON)) --version 2>/dev/null || echo missing). Use make PYTHON=python3.11 (and make clean if .venv was made with the old one)" >&2; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) < $(NODE_MIN) ? 1 : 0)' 2>/dev/null \
		|| { echo "make: the transformers.js tests need Node.js >= $(NODE_MIN); node is $$(node --version 2>/dev/null || echo missing). Install Node $(NODE_MIN) (e.g. from nodejs.org or nvm)" >&2; exit 1; }

# Debian's chromium for tests/test_web_browser.py: Playwright drives it; Playwright's own browser download does not work here
$(CHROMIUM):
	@if [ "$$PEMA_SKIP_BROWSER" = 1 ]; then echo "make: PEMA_SKIP_BROWSER=1: not installing chromium; the browser tests skip"; \
	elif [ "$$(id -u)" != 0 ]; then echo "make: $(CHROMIUM) is missing and installing it needs root: sudo apt-get update && sudo apt-get install -y chromium (or set PEMA_SKIP_BROWSER=1)" >&2; exit 1; \
	else apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; fi


setup: versions $(STAMP)

demo: versions $(STAMP)
	$(VENV)/bin/pema-export --corpus samples/app_texts.txt --out build/demo/model.onnx

test: versions $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build $(VENV) node_modules
