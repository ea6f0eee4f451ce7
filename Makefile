# Set-up and everyday commands. Each target creates .venv when missing and
# installs the package (building its compiled core) into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h)

.PHONY: demo test bench lint clean

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m runtime demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

clean:
	rm -rf build *.egg-info src/*.egg-info src/runtime/*.so $(VENV)

# Coverage-guided fuzzing of the compiled core under AddressSanitizer (fuzz/README.md):
# builds an instrumented copy in build/fuzz/ (needs clang), then runs each target
# for FUZZ_SECONDS. FUZZ_TARGETS picks targets (decode, update); FUZZ_ARGS go to libFuzzer.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	$(PYTHON) fuzz/run.py --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS) $(if $(FUZZ_ARGS),-- $(FUZZ_ARGS))
