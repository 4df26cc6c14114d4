# sibnn: two commands on a fresh machine.
#   make build   install (once) and compile the shipped default model for the Pynq-Z2
#   make test    install (once) and run the default test suite
VENV ?= .venv
PY := $(VENV)/bin/python
BOARD ?= pynq-z2
STAMP := $(VENV)/.sibnn-installed

.PHONY: install deps build test test-slow bench bench-accuracy lint clean

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

bench: install
	$(PY) -m bench

# The accuracy ablation on CPU: every variant x 2 seeds, 2 epochs on 27,500 images, one job per
# seed (students on the shipped student recipe; the GPU run: scripts/device_ablation.sh).
bench-accuracy: install
	$(PY) -m bench.accuracy --epochs 2 --train-subset 27500 --seeds 0 1 --parallel

lint: install
	$(VENV)/bin/ruff check quant_models flow tests bench

clean:
	rm -rf build .pytest_cache
