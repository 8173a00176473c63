# clrlib: set up, run the notebook suite, test.
#   make run     set up .venv, find CIFAR-10, run every notebook (profile auto; PROFILE=cpu for
#                ResNet-20 at full data on a CPU, a few hours)
#   make test    set up .venv, run the tests and the notebooks in the smoke profile

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Written once the project is installed in $(VENV); redone when pyproject.toml changes.
STAMP  := $(VENV)/.clrlib-installed

# torch and torchvision versions that match this machine's architecture.
ARCH := $(shell uname -m)
ifeq ($(ARCH),x86_64)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
else ifeq ($(ARCH),aarch64)
TORCH_PINS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS ?= torch torchvision
endif
# Where pip gets torch and torchvision: empty for PyPI (on Linux x86_64, the CUDA build, several GB);
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for PyTorch's CPU-only build.
TORCH_INDEX ?=

# Where CIFAR-10 is read from: $CLRLIB_DATA if set, else ./data (git-ignored).
# Override with `make run DATA=/some/folder`.
DATA ?= $(if $(CLRLIB_DATA),$(CLRLIB_DATA),data)
# The profile `make run` runs: auto (full on a CUDA GPU, quick on a CPU), or smoke, quick, full, cpu.
PROFILE ?= auto
# The copy of CIFAR-10 kept beside the project on its own machines (absent elsewhere).
SHARED_CIFAR := ../shared/data/cifar10/unpack.py

# Notebooks to execute under nbval; none yet is fine.
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
# Where the notebooks write while tested (emptied first, so no saved run is reused),
# keeping results/ for real runs.
TEST_OUT := $(CURDIR)/build/test-results

.PHONY: setup data run test

# setup: create $(VENV) if it is missing, install torch, then clrlib with all extras.
setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install $(TORCH_PINS) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -e '.[all]'
	touch $@

# data: unpack the project's copy of CIFAR-10 into ./data (checksummed; files already right
# are skipped), unless the data is read from elsewhere (CLRLIB_DATA or DATA) or there is no copy.
data:
	@if [ "$(DATA)" != data ]; then \
	  echo "data: reading CIFAR-10 from $(DATA)"; \
	elif [ -f $(SHARED_CIFAR) ]; then \
	  echo "$(PYTHON) $(SHARED_CIFAR) data"; \
	  $(PYTHON) $(SHARED_CIFAR) data; \
	else \
	  echo "data: no local copy of CIFAR-10 to unpack; the runner looks in $(DATA)"; \
	fi

# run: the whole notebook suite; results go to results/<profile>/.
run: setup data
	$(PY) -m clrlib run --profile $(PROFILE) --data $(DATA) --out results

# test: the unit tests and the library's docstring examples, then every notebook executed
# by nbval (in this venv's Python) in the smoke profile.
test: setup
	rm -rf $(TEST_OUT)
	MPLBACKEND=Agg $(PY) -m pytest --doctest-modules clrlib
	CLRLIB_PROFILE=smoke CLRLIB_OUT=$(TEST_OUT) MPLBACKEND=Agg \
	  $(PY) -m pytest tests --nbval-lax --nbval-current-env $(NOTEBOOKS)
