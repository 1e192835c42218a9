# donkeycar 5.3 needs Python 3.11; fall back to python3 where it has no versioned name.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean

# (Re)install when the package metadata changes; pip reuses what is already there.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/donkey-saliency demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -rs $(ARGS)

# The unit tier alone (tests/unit): NumPy, OpenCV, onnx and ONNX Runtime only; seconds, not minutes.
test-fast: $(STAMP)
	$(PY) -m pytest -q -rs tests/unit $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/donkey-saliency bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info test-artifacts
