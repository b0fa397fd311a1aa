# The MVLIP study in two commands (README):
#   make book   set-up, then the whole smoke study through papermill, then the HTML book
#   make test   set-up, then the test suite (CI runs this through .ci/run)
#   make test-gpu  the GPU test tier (tests marked gpu; skipped without CUDA), its log in GPU_TIER_LOG
#   make lab    set-up, then JupyterLab at the repository root (notebooks/, kernel "Python (mvlip)")
# Options: make book PROFILE=paper ENCODERS="mambavision swin" STUDY_ARGS="--force -p epochs=2"
#          make lab LAB_ARGS="--no-browser --ServerApp.port=8890"
SHELL := /bin/bash
PYTHON := .venv/bin/python
PROFILE ?= smoke
ENCODERS ?= mambavision swin vit
STUDY_ARGS ?=
PYTEST_ARGS ?=
LAB_ARGS ?=
GPU_TIER_LOG ?= gpu-tier.log

.PHONY: all setup book study test test-gpu lab clean

all: book

setup:
	bash scripts/setup_env.sh

book: setup
	$(PYTHON) -m mvlip_utils.study --profile $(PROFILE) --encoders $(ENCODERS) $(STUDY_ARGS)
	@echo "The book: book/_build/html/index.html"

# the notebooks only, no book
study: setup
	$(PYTHON) -m mvlip_utils.study --profile $(PROFILE) --encoders $(ENCODERS) --no-book $(STUDY_ARGS)

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# the GPU test tier: `pytest -m gpu` (README, "The GPU test tier"); the log (pytest's summary with the GPU, driver,
# versions, commit and date) goes to $(GPU_TIER_LOG)
test-gpu: setup
	PYTHON=$(PYTHON) bash scripts/gpu_tier.sh $(GPU_TIER_LOG) $(PYTEST_ARGS)

# JupyterLab (installed by the set-up) serving the repository root; the notebooks ask for the kernel
# "mvlip" that the set-up registers. Jupyter refuses to run as root without --allow-root.
lab: setup
	.venv/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# removes what the smoke study and the book build wrote; keeps .venv, the paper profile's results and any
# dataset of your own under data/
clean:
	rm -rf book/_build book/executed results/smoke data/generated-*
	find . -name __pycache__ -type d -not -path "./.venv/*" -prune -exec rm -rf {} +
