# Set-up and everyday commands. Each target creates .venv when missing and
# installs the package (building its compiled core) into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SETUP_LOG := build/setup-venv.log
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h)
LINT_PATHS := src tests bench fuzz $(wildcard examples)

.PHONY: demo test test-fast bench lint clean

# One line says what happens; the output is shown only if it fails (it stays in $(SETUP_LOG)).
$(STAMP): $(SOURCES)
	@mkdir -p $(dir $(SETUP_LOG))
	@if [ -x $(BIN)/python ]; then \
	    echo "updating $(VENV): reinstalling runtime, rebuilding the C core (under a minute)..."; \
	else \
	    echo "setting up $(VENV): installing runtime and its dependencies, building the C core (about a minute)..."; \
	fi
	@{ test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } > $(SETUP_LOG) 2>&1 \
	    && { $(BIN)/python -m pip install --upgrade pip || echo "pip not upgraded; going on"; } >> $(SETUP_LOG) 2>&1 \
	    && $(BIN)/python -m pip install --editable '.[test,dev]' >> $(SETUP_LOG) 2>&1 \
	    || { cat $(SETUP_LOG); echo "setting up $(VENV) failed; its output is above and in $(SETUP_LOG)" >&2; exit 1; }
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m runtime demo $(DEMO_ARGS)

# Everything (what CI runs: .ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The edit loop: skips the tests marked @pytest.mark.slow (end to end, multi-process, builds), and
# fails an unmarked test that takes over 1 s (--slow-check, tests/conftest.py; make test leaves it off).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --slow-check $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

clean:
	rm -rf build dist *.egg-info src/*.egg-info src/runtime/*.so $(VENV)

# Coverage-guided fuzzing of the compiled core under AddressSanitizer (fuzz/README.md):
# builds an instrumented copy in build/fuzz/ (needs clang), then runs each target
# for FUZZ_SECONDS. FUZZ_TARGETS picks targets (decode, update, pump); FUZZ_ARGS go to libFuzzer.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	$(PYTHON) fuzz/run.py --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS) $(if $(FUZZ_ARGS),-- $(FUZZ_ARGS))
