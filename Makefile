# dl2021 — see README.md. Every target works from a fresh clone.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# The CPU build of torch (a local wheel on the course's CI machines). On a GPU workstation: make TORCH=torch venv
TORCH   ?= torch==2.13.0
# make gpu: Python version of the GPU host, for the wheelhouse
PYVER   ?= 3.12
EXEC_PKGS := nbdev==2.4.14 execnb==0.1.18 fastcore==1.14.5 ghapi==1.1.1 ipywidgets einops pyyaml
FMNIST  ?= /usr/share/datasets/fashion-mnist

.PHONY: help venv data test docs lab gpu wheelhouse gpu-setup clean
help:
	@echo "make test | docs | lab | gpu NB=nbs/xx.ipynb | wheelhouse [PYVER=3.12] | clean   (see README.md)"

$(BIN)/.installed: settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $@

venv: $(BIN)/.installed

data: venv
	@PY=$(BIN)/python bash tools/ensure_data.sh

test: venv data
	@$(BIN)/python tools/test_all.py

docs: venv
	@command -v quarto >/dev/null || { \
	  echo "make docs needs Quarto, which is not installed here (it is not on PyPI, Debian or npm)."; \
	  echo "Install it from https://quarto.org/docs/get-started/ (a .deb, .pkg or .msi), then run make docs again."; \
	  echo "Nothing was built."; exit 1; }
	$(BIN)/python -c "from dl2021.results import write_results_page as w; w('nbs/results.md')"
	$(BIN)/nbdev_docs
	@echo "Site built in _docs/ (open _docs/index.html, or run: $(BIN)/nbdev_preview)"

lab: venv
	$(BIN)/jupyter lab --notebook-dir=nbs

# ---- executing notebooks on a GPU host (no internet there) -------------------------------------------------
# Here, with the registries:   make wheelhouse [PYVER=3.12]    -> .wheelhouse/ (executor wheels) and data/ (Fashion-MNIST)
# Copy the repo (with .wheelhouse/ and data/) to the GPU host, which has python, torch (CUDA) and matplotlib, then:
#                               make gpu NB=nbs/20_ddpm.ipynb  -> runs every cell (gpu cells too), writes outputs back
wheelhouse:
	rm -rf .wheelhouse && mkdir -p .wheelhouse data/fashion-mnist
	$(PYTHON) -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version $(PYVER) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  --platform any -d .wheelhouse $(EXEC_PKGS)
	cp $(FMNIST)/*-ubyte* data/fashion-mnist/
	@du -sh .wheelhouse data

# where the executor's packages live on the GPU host (installed from the wheelhouse without any index)
GPU_SITE := $(CURDIR)/.gpu-site
gpu-setup:
	@if [ -x $(BIN)/python ]; then echo "using $(BIN)"; \
	elif [ ! -d $(GPU_SITE) ]; then $(PYTHON) -m pip install -q --no-index --no-deps --target $(GPU_SITE) .wheelhouse/*.whl; fi

gpu: gpu-setup
	@test -n "$(NB)" || { echo "usage: make gpu NB=nbs/xx.ipynb [NB='nbs/a.ipynb nbs/b.ipynb']"; exit 2; }
	@if [ -x $(BIN)/python ]; then $(BIN)/python tools/run_nb.py $(NB); else \
	  DL2021_DATA=$${DL2021_DATA:-$(CURDIR)/data/fashion-mnist} PYTHONPATH=$(GPU_SITE):$(CURDIR) \
	  $(PYTHON) tools/run_nb.py $(NB); fi

clean:
	rm -rf _proc _docs nbs/results.md .pytest_cache
