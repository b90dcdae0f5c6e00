# corral: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Faster pytest start and no stale bytecode from another checkout.
export PYTHONDONTWRITEBYTECODE := 1

RUST_SOURCES := $(shell find crates -name '*.rs' -o -name Cargo.toml) Cargo.toml pyproject.toml

.PHONY: all build demo test test-rust test-python bench soak lint clean

all: build

$(VENV)/.ready: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "maturin>=1.7,<2" "cloudpickle>=2.2" "pytest>=8" "pytest-timeout>=2.3" "numpy>=1.24" "hypothesis>=6" "tqdm>=4.66" "ray>=2.9" "dask[distributed]>=2024.1"
	touch $@

# The extension, built in release mode (the tests exercise real timing).
$(VENV)/.built: $(VENV)/.ready $(RUST_SOURCES) $(shell find python -name '*.py' -o -name '*.pyi')
	$(VENV)/bin/maturin develop --release -q
	touch $@

build: $(VENV)/.built

$(VENV)/.demo-ready: $(VENV)/.ready
	$(PIP) install -q "scikit-learn>=1.3"
	touch $@

demo: build $(VENV)/.demo-ready
	$(PY) -m corral demo

test: build $(VENV)/.demo-ready test-rust test-python

test-rust:
	cargo test -p corral-core --quiet

test-python: build
	$(PY) -m pytest tests -q

$(VENV)/.bench-ready: $(VENV)/.ready
	$(PIP) install -q "faster-fifo>=1.4" "tqdm>=4.66" "joblib>=1.3" "mpire>=2.10" "matplotlib>=3.8"
	touch $@

bench: build $(VENV)/.bench-ready
	$(PY) -m corral bench --markdown BENCHMARKS.md
	$(PY) -m corral bench --from BENCHMARKS.md --plot docs/benchmarks.png

# 5 minutes of a process pool and a queue under random SIGKILLs (a 20-second
# version runs in `make test`, tests/test_soak.py).
soak: build
	$(PY) -m corral soak --seconds 300

# The lint tools, in the same venv (stubtest imports the built extension).
$(VENV)/.lint-ready: $(VENV)/.ready
	$(PIP) install -q "ruff>=0.8" "mypy>=1.13"
	touch $@

# The house rules: Rust (clippy -D warnings, rustfmt), Python (ruff lint and
# format, mypy of python/corral: pyproject.toml's [tool.ruff] and [tool.mypy]),
# and the stub of the extension checked against the built module (stubtest;
# stubtest-allowlist.txt lists, with reasons, what a stub cannot express;
# --ignore-disjoint-bases: every pyclass is a PEP 800 disjoint base (two of
# them cannot be bases of one class): no code does that, and marking it would
# put one more decorator on every class of the stub).
lint: build $(VENV)/.lint-ready
	cargo clippy --workspace --all-targets -- -D warnings
	cargo fmt --all -- --check
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(PY) -m mypy
	$(PY) -m mypy --strict tests/typing  # user code as a type checker sees it (issue 14)
	$(PY) -m mypy.stubtest corral._core --ignore-disjoint-bases --allowlist stubtest-allowlist.txt

clean:
	rm -rf $(VENV) target
