# dl2021 — see README.md. Every target works from a fresh clone.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# The CPU build of torch (a local wheel on the course's CI machines). On a GPU workstation: make TORCH=torch venv
TORCH   ?= torch==2.13.0
# make gpu: Python version of the GPU host, for the wheelhouse
PYVER   ?= 3.12
# what the runner needs on a GPU host beyond python, torch, matplotlib (no ipywidgets: headless runs draw no widget)
EXEC_PKGS := nbdev==2.4.14 execnb==0.1.18 fastcore==1.14.5 ghapi==1.1.1 einops pyyaml tqdm
# ...of which the GPU host's image already has these (python3 there: torch, matplotlib, numpy, einops, tqdm, pyyaml...),
# left out of the wheelhouse, so that the working tree, the wheels and the data travel under 64 MiB. jedi (5 MB) is
# IPython's tab completion, which a headless run never calls.
GPU_HOST_HAS := build einops jedi packaging psutil pygments pyproject_hooks pyyaml setuptools six tqdm typing_extensions wheel

.PHONY: help venv data test docs lab course unpack wheelhouse rehearse clean
help:
	@echo "make lab | course [NB=nbs/xx.ipynb] | test | docs | unpack PACK=dir | wheelhouse [PYVER=3.12] | rehearse [NB=...] | clean   (see README.md)"

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

# JupyterLab on nbs/, opening the course's home notebook; as root (Docker, cloud GPU hosts) it needs --allow-root.
LAB_ARGS ?=
lab: venv data
	@$(BIN)/jupyter lab --ServerApp.root_dir=nbs --LabApp.default_url=/lab/tree/index.ipynb \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

# ---- executing notebooks: make course [NB=...] [PRESET=cpu|full] [JOBS=n] [DEADLINE=s] [BUDGET=s] [TIMEOUT=s] [PACK=dir] [FORCE=1] [RECORD_ONLY=1]
# Uses .venv where it exists; on a GPU host without internet (a .wheelhouse/ copied from `make wheelhouse`, no .venv)
# the host's python and torch with the wheelhouse installed into .gpu-site/; on a fresh machine it makes .venv first.
GPU_SITE := $(CURDIR)/.gpu-site
COURSE_ARGS = $(NB) $(if $(PRESET),--preset $(PRESET)) $(if $(JOBS),--jobs $(JOBS)) $(if $(BUDGET),--budget $(BUDGET)) \
  $(if $(DEADLINE),--deadline $(DEADLINE)) $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(PACK),--pack $(PACK)) \
  $(if $(FORCE),--force) $(if $(RECORD_ONLY),--record-only)
OFFLINE_ENV = DL2021_DATA=$${DL2021_DATA:-$(CURDIR)/data/fashion-mnist} \
  DL2021_FORTUNES=$${DL2021_FORTUNES:-$(CURDIR)/data/fortunes} DL2021_WORDNET=$${DL2021_WORDNET:-$(CURDIR)/data/wordnet} \
  PYTHONPATH=$(GPU_SITE):$(CURDIR)

course:
	@if [ -x $(BIN)/python ]; then $(MAKE) -s data && $(BIN)/python tools/run_course.py $(COURSE_ARGS); \
	elif [ -d .wheelhouse ]; then \
	  [ -d $(GPU_SITE) ] || $(PYTHON) -m pip install -q --no-index --no-deps --target $(GPU_SITE) .wheelhouse/*.whl; \
	  [ -d data/wordnet ] || [ ! -f data/text.tar.xz ] || tar -xJf data/text.tar.xz -C data; \
	  $(OFFLINE_ENV) $(PYTHON) tools/run_course.py $(COURSE_ARGS); \
	else $(MAKE) -s venv data && $(BIN)/python tools/run_course.py $(COURSE_ARGS); fi

# apply the archives a `make course PACK=dir` run wrote (e.g. on a GPU host) to this checkout
unpack:
	@test -n "$(PACK)" || { echo "usage: make unpack PACK=folder-or-archive"; exit 2; }
	@$$([ -x $(BIN)/python ] && echo $(BIN)/python || echo $(PYTHON)) tools/run_course.py --unpack $(PACK)

# Prepare a GPU host with no internet, here (with the registries): the executor's wheels for its Python and the data.
wheelhouse: venv data
	rm -rf .wheelhouse data && mkdir -p .wheelhouse
	$(BIN)/pip download -q --disable-pip-version-check --only-binary=:all: --python-version $(PYVER) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  --platform any -d .wheelhouse $(EXEC_PKGS)
	cd .wheelhouse && rm -f $(foreach p,$(GPU_HOST_HAS),$(p)-*.whl)
	$(BIN)/python tools/pack_data.py
	@du -sh .wheelhouse data

# before a GPU lease: every notebook at the smoke preset with CUDA's bfloat16 autocast forced on the CPU (tools/rehearse_gpu.py)
rehearse: venv data
	@$(BIN)/python tools/rehearse_gpu.py $(NB)

clean:
	rm -rf _proc _docs nbs/results.md .pytest_cache
