# The MVLIP study in two commands (README):
#   make book   set-up, then the whole smoke study through papermill, then the HTML book
#   make test   set-up, then the test suite (CI runs this through .ci/run)
# Options: make book PROFILE=paper ENCODERS="mambavision swin" STUDY_ARGS="--force -p epochs=2"
SHELL := /bin/bash
PYTHON := .venv/bin/python
PROFILE ?= smoke
ENCODERS ?= mambavision swin vit
STUDY_ARGS ?=
PYTEST_ARGS ?=

.PHONY: all setup book study test clean

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

# removes what the smoke study and the book build wrote; keeps .venv, the paper profile's results and any
# dataset of your own under data/
clean:
	rm -rf book/_build book/executed results/smoke data/generated-*
	find . -name __pycache__ -type d -not -path "./.venv/*" -prune -exec rm -rf {} +
