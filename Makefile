# The newest donkeycar each Python has (setup.cfg [dev]): 5.3 on 3.11, 5.4 on 3.12/3.13. Prefer 3.11
# (the CI's), else the machine's python3, else a versioned 3.12/3.13.
PYTHON ?= $(shell command -v python3.11 || command -v python3 || command -v python3.13 || command -v python3.12)
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
