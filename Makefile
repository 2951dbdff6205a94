# Wakeline: every target sets up what it needs on a fresh machine (Python 3.11+, Java 17+, Maven).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
WL     := $(BIN)/wakeline
STAMP  := $(VENV)/.installed

.PHONY: test demo up down status init bench lint clean unit soak

# The example outside world (examples/world) is a package of its own, so `pip install wakeline`
# stays free of it; the tests and the demo use it.
$(STAMP): pyproject.toml examples/world/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q -e examples/world
	touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	$(WL) stack up

down:
	@if [ -x $(WL) ]; then $(WL) stack down; fi

status: $(STAMP)
	$(WL) stack status

init: up
	$(WL) init

# Starts the stack, runs every test, stops the stack; keeps pytest's exit code.
test: $(STAMP)
	$(WL) stack up
	$(WL) init
	status=0; $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; $(WL) stack down; exit $$status

# Longer fuzzing than `make test` runs (FUZZ_EXAMPLES per property; FUZZ_SEED for another
# stream of hostile records), then the crash tests again (the compensator's with SOAK_KILLS
# kills of its process).
SOAK_EXAMPLES ?= 5000
SOAK_KILLS ?= 100
soak: $(STAMP)
	$(WL) stack up
	$(WL) init
	status=0; FUZZ_EXAMPLES=$(SOAK_EXAMPLES) CRASH_KILLS=$(SOAK_KILLS) $(BIN)/pytest tests/fuzz tests/integration/test_crash_restart.py tests/integration/compensator/test_crash.py $(PYTEST_ARGS) || status=$$?; $(WL) stack down; exit $$status

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

# The demo starts the local stack itself and stops it at the end; it runs in topics and a
# database of its own, made for the run (`wakeline demo --keep` leaves them and the stack
# for exploring: `. .wakeline/demo/env.sh; wakeline workflow list`).
demo: $(STAMP)
	$(WL) demo $(DEMO_ARGS)

bench: $(STAMP)
	$(WL) stack up
	$(WL) init
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean: down
	rm -rf .wakeline
