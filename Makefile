# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xpaste-installed
DEMO_OUT ?= demo_out
# detectron2 has no release on any registry: a CPU build for the pinned torch (see its README). Installed
# when the file exists; without it the detectron2 tests skip and say why.
DETECTRON2_WHEEL ?= ../shared/wheels/detectron2-0.6-cp311-cp311-linux_x86_64.whl
# mmdet 3.3 refuses mmcv >= 2.2 and full mmcv 2.1 does not build against torch 2.14: a side virtualenv with
# mmcv-lite that sees the project's packages through a .pth file (about 10 s to create).
MMDET_VENV ?= .venv-mmdet
MMDET_STAMP := $(MMDET_VENV)/.xpaste-installed

.PHONY: demo test test-fast test-mmdet soak bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements/dev.txt
	# lvis and ultralytics pull the GUI opencv, which overwrites the headless cv2 files: restore them.
	$(PY) -m pip install --force-reinstall --no-deps opencv-python-headless==5.0.0.93
	$(PY) -m pip install --no-deps -e .
	if [ -f "$(DETECTRON2_WHEEL)" ]; then $(PY) -m pip install "$(DETECTRON2_WHEEL)"; \
	else echo "$(DETECTRON2_WHEEL) not found: detectron2 is not installed, its tests will skip"; fi
	touch $(STAMP)

$(MMDET_STAMP): $(STAMP)
	test -x $(MMDET_VENV)/bin/python || $(PYTHON) -m venv $(MMDET_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(MMDET_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_xpaste_project.pth"
	$(MMDET_VENV)/bin/python -m pip install mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0
	touch $(MMDET_STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m xpaste.demo --out $(DEMO_OUT)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow"

test-mmdet: $(MMDET_STAMP)  # the mmdet transform inside real mmdet 3.3 pipelines and datasets
	OMP_NUM_THREADS=1 $(MMDET_VENV)/bin/python -m pytest -q tests/test_mmdet_adapter.py

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -x -m "not slow"

soak: $(STAMP)  # long kill/fuzz runs (minutes), not part of `make test`
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow tests/test_soak.py tests/test_fuzz_cli.py

bench: $(STAMP)
	$(PY) benchmarks/paste_throughput.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .hypothesis
