# One command each: `make test`, `make demo`. Both build .venv from the project's own files.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-fast demo docs notebooks bench bench-smoke bench-scale gpu-check blend3d ablation wheel kaggle lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e ".[notebooks,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# JOBS pytest-xdist workers (conftest.py keeps the notebooks together, in order, on one of them).
JOBS ?= 2
test: venv
	$(PY) -m gi_utils.pipeline --data-only
	$(PY) -m pytest --nbval -p no:cacheprovider -n $(JOBS)  # the design card's `pytest --nbval`: conftest.py makes it hermetic

test-fast: venv
	$(PY) -m pytest tests -m "not slow"

# Writes only under runs/ (a second call continues where the first stopped); `make docs`
# publishes its tables, figures, executed notebooks and report (README.md, docs/, pictures/).
demo: venv
	$(PY) -m gi_utils.pipeline

docs: venv
	$(PY) -m gi_utils.pipeline docs

# Copy notebooks/setup_cell.py into every notebook and execute them with their defaults.
notebooks: venv
	$(PY) -m gi_utils.pipeline notebooks

bench: venv
	$(PY) benchmarks/run_all.py

# Every benchmark at its smallest size (fullsize.py and memory_3d.py too), two at a time: a
# check that none has rotted, run by CI after the tests; its figures mean nothing.
bench-smoke: venv
	$(PY) benchmarks/run_all.py --smoke

# The GPU acceptance check (benchmarks/gpu_check.py): one line per fact, at most 6 minutes on
# a fresh GPU machine. SMOKE=1: its smallest size, on a CPU too (CI). No venv prerequisite:
# the GPU machine has no network (its image's python3 with the wheels the script's docstring
# names), so the venv's python runs it where it exists, else python3.
GPU_CHECK_PY = $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_CHECK_PY) benchmarks/gpu_check.py $(if $(SMOKE),--smoke)

# Costs at the competition's size: 1/16 and 1/4 of the 38,496 slices, training included,
# extrapolated to the full set (about 5 GB of disk and 20 minutes on 2 cores); FRACTIONS=0.0625,0.25,1
# runs the full size as well (about 25 GB of disk, an hour).
FRACTIONS ?= 0.0625,0.25
bench-scale: venv
	$(PY) benchmarks/fullsize.py --fractions $(FRACTIONS) --train

# A 2.5D UNet and a 3-D SegResNet on fold 0 of the demo's split, then every model and blend
# scored on their out-of-fold volumes (docs/results.md: the blend against its members).
blend3d: venv
	$(PY) -m gi_utils.pipeline cv --arch unet --folds 0 --preset demo --runs-dir runs/blend3d
	$(PY) -m gi_utils.pipeline cv --arch segresnet3d --folds 0 --preset demo --runs-dir runs/blend3d
	$(PY) -m gi_utils.pipeline select --runs-dir runs/blend3d

# Each lever of docs/levers.md alone against the demo's UNet on fold 0 of the synthetic data, scored
# with a paired bootstrap interval: runs/ablation/ablation.md (about 25 minutes on an idle 2-core
# machine, estimated; LEVERS=3d_crops adds the 3-D rounds, about 25 more). A second call continues.
LEVERS ?= all
ablation: venv
	$(PY) -m gi_utils.pipeline ablation --levers $(LEVERS)

# The wheels a Kaggle or Colab notebook needs offline, flat in dist/wheels: gi_utils,
# segmentation-models-pytorch and MONAI at the versions installed here (the Kaggle image has
# torch, timm, albumentations, accelerate and safetensors). `make kaggle` puts them in its dataset.
wheel: venv
	rm -rf dist/wheels && $(PY) -c "from gi_utils.pipeline import build_wheels; print(*build_wheels('dist/wheels'), sep='\n')"

# dist/kaggle/dataset (flat: the wheels, and the chosen models once runs/best_config.json
# exists) and dist/kaggle/kernel (04, internet off). The README's quick start gives the upload
# commands: kaggle datasets create -p dist/kaggle/dataset; kaggle kernels push -p dist/kaggle/kernel.
KAGGLE_USER ?= your-kaggle-name
kaggle: venv
	$(PY) -m gi_utils.pipeline kaggle --kaggle-user $(KAGGLE_USER)

lint: venv
	$(PY) -m ruff check gi_utils tests benchmarks notebooks

clean:
	rm -rf $(VENV) dist build *.egg-info
