# `make demo` and `make test` each do all of their own set-up on a fresh clone.
# PyTorch is installed first, from TORCH_SPEC (a CPU build here); a GPU user picks another build:
#   make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu126"
# Installing torch before the package means the package's `torch>=...` is already satisfied, so
# pip never resolves it to a multi-GB CUDA wheel on a CPU-only machine.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= dev
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.forgeml-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: setup
	$(BIN)/forgeml train configs/digits-cnn.yaml output.overwrite=true
	$(BIN)/python -m forgeml.cli.demo runs/digits-cnn

test: setup
	$(BIN)/python -m pytest tests

lint: setup
	$(BIN)/ruff check forgeml tests bench
	$(BIN)/ruff format --check forgeml tests bench

bench: setup
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/precision.py
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/ddp.py
	$(BIN)/python bench/sentiment.py --minilm
	$(BIN)/python bench/minilm_sentiment.py --lora
	$(BIN)/python bench/gpt_char.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/gpt_tiny_train.py
	$(BIN)/python bench/data_transform.py

clean:
	rm -rf $(VENV) runs .pytest_cache
