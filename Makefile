# rmopt: every target sets up .venv first (CPU torch, then the project in editable mode).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: test-gpu install demo demo-quick replicates studies test test-full bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# the main study (25% label noise, no KL penalty); the controls (bon_clean/, ppo_kl0.01/) come with each
# replicate of make replicates, or with experiments/demo.py run without --no-controls
demo: install
	$(BIN)/python experiments/demo.py --no-controls

demo-quick: install
	$(BIN)/python experiments/demo.py --quick

# the demo K times with independent seeds (rep1 = make demo plus the controls), summary and report over replicates
REPLICATES ?= 3
replicates: install
	$(BIN)/python experiments/replicate.py --replicates $(REPLICATES) --out runs/replicates

# the cheap studies on a finished demo (see experiments/); DEMO=runs/demo-quick after make demo-quick
DEMO ?= runs/demo
studies: install
	$(BIN)/python experiments/ensemble_size.py --demo $(DEMO)
	$(BIN)/python experiments/uwo_weight.py --demo $(DEMO)
	$(BIN)/python experiments/scaling_laws.py --demo $(DEMO)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-full: install
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

test-gpu: install  # on a machine with a CUDA GPU (TORCH_SPEC=torch for a CUDA build): bf16, FSDP, CUDA forward
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check rmopt tests experiments bench

clean:
	rm -rf outputs runs models data lightning_logs wandb .pytest_cache
	find multirun -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
