# The two commands of the README: `make test` and `make demo`. Both work from nothing on a fresh
# machine: they create .venv, install the pinned versions of constraints.txt, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo
DEMO_SEED ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,tensorboard]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) dataset_scripts/synthetic.py --output-dir $(DEMO_DIR)/data --seed $(DEMO_SEED)
	$(PY) evaluate_stvg.py --dataset $(DEMO_DIR)/data --split test --baseline object-similarity --output-dir $(DEMO_DIR)/baseline

clean:
	rm -rf $(VENV) outputs
