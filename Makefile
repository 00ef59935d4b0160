# Quick start: `make demo` (export the embedded MiniLM on the sample corpus) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup bench clean

$(STAMP): pyproject.toml constraints.txt package.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	# transformers.js for the JS-client tests; its postinstall would try a download, so skip it
	ONNXRUNTIME_NODE_INSTALL=skip npm ci --silent --no-audit --no-fund
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pema-export --corpus samples/app_texts.txt --out build/demo/model.onnx

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build $(VENV) node_modules
