# sibnn: two commands on a fresh machine.
#   make build   install (once) and compile the shipped default model for the Pynq-Z2
#   make test    install (once) and run the default test suite
VENV ?= .venv
PY := $(VENV)/bin/python
BOARD ?= pynq-z2
STAMP := $(VENV)/.sibnn-installed

.PHONY: install deps build test test-slow bench bench-accuracy notebooks lint clean

install:
	@bash scripts/install.sh

# finn-hlslib for `--sim cppsim|all` (g++ cppsim without Vitis), at finn-plus' pinned commit, in
# $(FINN_DEPS) (default deps/). Needs GitHub, or HLSLIB_SRC=<local clone>.
deps: install
	@bash scripts/deps.sh

build: install
	$(PY) flow/build.py --board $(BOARD)

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

# Each benchmark rewrites bench/results/<name>.json|md; bench.report then regenerates
# docs/results.md and the README's results block from them (tests/bench/test_bench_report.py).
bench: install
	$(PY) -m bench
	$(PY) -m bench.report

# The accuracy ablation on CPU: every variant x 2 seeds, 2 epochs on 27,500 images, one job per
# seed (students on the shipped student recipe; the GPU run: scripts/device_ablation.sh).
bench-accuracy: install
	$(PY) -m bench.accuracy --epochs 2 --train-subset 27500 --seeds 0 1 --parallel
	$(PY) -m bench.report

# Re-execute the notebooks and commit them with their outputs (tables and figures), so a reader
# sees the plots without running them. NOTEBOOKS_FULL=1 (default) is the full configuration (the
# default model on every board, the width/r sweeps: about 13 minutes on 2 busy cores);
# NOTEBOOKS_FULL=0 the small one the test suite runs. They run in a scratch directory that links
# the sources in (as tests/bench/test_notebooks.py does), so build output stays under build/.
NOTEBOOKS_FULL ?= 1
NBRUN := build/notebooks-run
notebooks: install
	rm -rf $(NBRUN) && mkdir -p $(NBRUN)
	for d in flow quant_models bench; do ln -s $(CURDIR)/$$d $(NBRUN)/$$d; done
	cp notebooks/*.ipynb $(NBRUN)/
	cd $(NBRUN) && for nb in *.ipynb; do \
	  SIBNN_NOTEBOOKS_FULL=$(NOTEBOOKS_FULL) $(CURDIR)/$(VENV)/bin/jupyter-execute --inplace \
	    --timeout=-1 $$nb || exit 1; done
	cp $(NBRUN)/*.ipynb notebooks/

# ruff; vulture (dead code; its whitelist is scripts/vulture_whitelist.py); the size and layer
# goals (scripts/check_structure.py: modules <= 600 lines, functions <= 80, classes <= 300,
# imports one way down the layers, no cycle)
lint: install
	$(VENV)/bin/ruff check quant_models flow tests bench scripts
	$(VENV)/bin/vulture
	$(PY) scripts/check_structure.py

clean:
	rm -rf build .pytest_cache
