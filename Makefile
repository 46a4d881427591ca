# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xpaste-installed
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast soak bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements/dev.txt
	# lvis and ultralytics pull the GUI opencv, which overwrites the headless cv2 files: restore them.
	$(PY) -m pip install --force-reinstall --no-deps opencv-python-headless==5.0.0.93
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m xpaste.demo --out $(DEMO_OUT)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow"

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -x -m "not slow"

soak: $(STAMP)  # long kill/fuzz runs (minutes), not part of `make test`
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow tests/test_soak.py

bench: $(STAMP)
	$(PY) benchmarks/paste_throughput.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .hypothesis
