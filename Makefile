# The two commands of the README: `make test` and `make demo`. Both work from nothing on a fresh
# machine: they create .venv, install the pinned versions of constraints.txt, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo
DEMO_SEED ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
comma := ,
space := $(eval) $(eval)

.PHONY: install test demo results clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,tensorboard]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

# The demo: build the default synthetic benchmark, score the object-similarity baseline, train with EM
# (small model, 8 epochs: 7 min 45 s on 2 CPU cores after installation), then print both rows in one table.
# Re-running reuses a finished build/baseline and starts training afresh.
DEMO_TRAIN_ARGS ?= $(DEMO_MODEL_ARGS) --epochs 8 --learning-rate 1e-3 --seed $(DEMO_SEED)
DEMO_MODEL_ARGS ?= --hidden-size 128 --num-attention-heads 4 --num-layers 1 --intermediate-size 256 --word-embedding-dim 64

demo: install
	test -f $(DEMO_DIR)/data/README.md || $(PY) dataset_scripts/synthetic.py --output-dir $(DEMO_DIR)/data --seed $(DEMO_SEED)
	test -f $(DEMO_DIR)/baseline/metrics.json || $(PY) evaluate_stvg.py --dataset $(DEMO_DIR)/data --split test \
		--baseline object-similarity --output-dir $(DEMO_DIR)/baseline
	rm -rf $(DEMO_DIR)/model
	$(PY) train_accelerate.py --dataset $(DEMO_DIR)/data --output-dir $(DEMO_DIR)/model --eval-split test \
		--report-to none $(DEMO_TRAIN_ARGS)
	$(PY) -m stvg_data.reporting "object similarity=$(DEMO_DIR)/baseline/metrics.json" \
		"stvg-vem (EM)=$(DEMO_DIR)/model/metrics.json" --output $(DEMO_DIR)/results.txt

# The README's results table: the full model, both single-loss ablations and the paper's literal
# reconstruction assignment, 3 training seeds each, on the demo's benchmark: 12 runs of up to 13 minutes each on one
# CPU thread (the README's table: 71 minutes on 2 cores with two runs side by side).
RESULTS_DIR ?= outputs/results
RESULTS_SEEDS ?= 0 1 2
RESULTS_VARIANTS ?= full:--losses=both contrastive:--losses=contrastive reconstruction:--losses=reconstruction \
	variational:--reconstruction-assignment=variational

results: install
	test -f $(DEMO_DIR)/data/README.md || $(PY) dataset_scripts/synthetic.py --output-dir $(DEMO_DIR)/data --seed 0
	test -f $(DEMO_DIR)/baseline/metrics.json || $(PY) evaluate_stvg.py --dataset $(DEMO_DIR)/data --split test \
		--baseline object-similarity --output-dir $(DEMO_DIR)/baseline
	for variant in $(RESULTS_VARIANTS); do for seed in $(RESULTS_SEEDS); do \
		name=$${variant%%:*}; flag=$${variant#*:}; out=$(RESULTS_DIR)/$${name}_s$${seed}; \
		test -f $$out/metrics.json || { rm -rf $$out; $(PY) train_accelerate.py --dataset $(DEMO_DIR)/data \
			--output-dir $$out --eval-split test --report-to none --no-progress $(DEMO_MODEL_ARGS) --epochs 12 \
			--learning-rate 1e-3 --seed $$seed $$flag || exit 1; }; \
	done; done
	$(PY) -m stvg_data.reporting "object similarity=$(DEMO_DIR)/baseline/metrics.json" \
		$(foreach v,$(RESULTS_VARIANTS),"$(firstword $(subst :, ,$(v)))=$(subst $(space),$(comma),$(foreach s,$(RESULTS_SEEDS),$(RESULTS_DIR)/$(firstword $(subst :, ,$(v)))_s$(s)/metrics.json))") \
		--output $(RESULTS_DIR)/results.txt

clean:
	rm -rf $(VENV) outputs
