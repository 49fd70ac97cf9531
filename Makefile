# Two commands: `make demo` (the whole pipeline on the embedded demo data) and `make test`.
# Both install what they need into .venv first.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INPUT_DIR ?= data/demo
WORK_DIR ?= work
PROFILE ?= profiles/demo.json
# optional: a second, differently built stage-1 model (e.g. mobilenetv3_small_100) that 05
# blends with the stage-3 run instead of the main stage-1 run (adds ~5 min on 2 CPU cores)
SECOND_BACKBONE ?=
ARGS := --cfg_file=$(PROFILE) --input_dir=$(INPUT_DIR) --work_dir=$(WORK_DIR)

.PHONY: install demo rounds test bench devsets kaggle clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -c "import timm, torch, torchvision, librosa, soundfile; print('torch', torch.__version__, 'timm', timm.__version__)"
	touch $@

demo: install
	@start=$$(date +%s); \
	$(PYTHON) 01_preprocess.py $(ARGS) && \
	$(PYTHON) 02_train_stage1.py $(ARGS) && \
	$(PYTHON) 04_train_stage3.py --stage=stage2 $(ARGS) && \
	$(PYTHON) 03_pseudo_label.py --source=stage2 $(ARGS) && \
	$(PYTHON) 04_train_stage3.py --stage=stage3 $(ARGS) --memo="round 1" && \
	if [ -n "$(SECOND_BACKBONE)" ]; then $(PYTHON) 02_train_stage1.py $(ARGS) \
	  --backbone=$(SECOND_BACKBONE) --memo="second backbone" || exit 1; fi && \
	$(PYTHON) 05_ensemble.py $(ARGS) --runs=stage3/latest,stage1/latest && \
	$(PYTHON) -m common.report --work_dir=$(WORK_DIR) --seconds=$$(( $$(date +%s) - start ))

# More pseudo-label rounds after `make demo`: each round labels with the latest stage-3
# models and fine-tunes them further (make rounds ROUNDS=2).
ROUNDS ?= 1
# extra flags for 03 in each round, e.g. PSEUDO_ARGS="--target_precision=0.95"
PSEUDO_ARGS ?=
rounds: install
	@for r in $$(seq 2 $$(( $(ROUNDS) + 1 ))); do \
	  $(PYTHON) 03_pseudo_label.py --source=stage3 $(ARGS) $(PSEUDO_ARGS) && \
	  $(PYTHON) 04_train_stage3.py --stage=stage3 --init_from=stage3 $(ARGS) --memo="round $$r" || exit 1; \
	done; $(PYTHON) -m common.report --work_dir=$(WORK_DIR)

test: install
	$(PYTHON) -m pytest -q tests

# Throughput and memory figures against what this machine allows (bench/bench.py); writes
# $(WORK_DIR)/bench.json. Synthetic audio goes to /tmp/bench, not into the repository.
bench: install
	$(PYTHON) -m bench.bench --work_dir=$(WORK_DIR)

# The development table (bench/devsets.py): the pipeline on the demo, a harder demo variant and
# ../shared/devsets/nips4b with PROFILE; CV and test LWLRAP per stage, prevalence baseline,
# seconds (about 50 minutes on 2 CPU cores). DEVSETS=nips4b runs one.
DEVSETS ?= demo,demo_hard,nips4b
devsets: install
	$(PYTHON) -m bench.devsets --sets=$(DEVSETS) --profile=$(PROFILE) --work_dir=$(WORK_DIR)

# One pasteable file per stage for Kaggle kernels (common/bundle.py): KAGGLE_DIR/NN_*.py and
# .ipynb, each the stage plus exactly the kit modules it imports; runs where the repo is not.
KAGGLE_DIR ?= dist/kaggle
kaggle: install
	$(PYTHON) -m common.bundle --out_dir=$(KAGGLE_DIR)

clean:
	rm -rf $(WORK_DIR)
