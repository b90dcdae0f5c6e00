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

.PHONY: all build demo test test-rust test-python bench soak lint docs wheel clean

all: build

# The venv with what `make build` needs: maturin and corral's one dependency.
# Each target adds only what it uses, so the first `make demo` installs no
# Ray or Dask.
$(VENV)/.ready: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "maturin>=1.7,<2" "cloudpickle>=2.2"
	touch $@

# .venv/.extra-NAME: pyproject.toml's extra NAME installed (the lists of
# optional dependencies live there only: `corral[NAME]` for a user).
$(VENV)/.extra-%: $(VENV)/.ready
	$(PY) -c 'import subprocess, sys, tomllib; extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *extras[sys.argv[1]]])' $*
	touch $@

# The extension, built in release mode (the tests exercise real timing).
$(VENV)/.built: $(VENV)/.ready $(RUST_SOURCES) $(shell find python -name '*.py' -o -name '*.pyi')
	$(VENV)/bin/maturin develop --release -q
	touch $@

build: $(VENV)/.built

demo: build $(VENV)/.extra-demo
	$(PY) -m corral demo

# The whole suite: the cluster executors' tests need Ray and Dask, the CLI's
# the demo's packages.
TEST_EXTRAS := $(VENV)/.extra-test $(VENV)/.extra-ray $(VENV)/.extra-dask $(VENV)/.extra-demo

test: test-rust test-python

test-rust:
	cargo test -p corral-core --quiet

test-python: build $(TEST_EXTRAS)
	$(PY) -m pytest tests -q

bench: build $(VENV)/.extra-bench $(VENV)/.extra-ray $(VENV)/.extra-dask
	$(PY) -m corral bench --markdown BENCHMARKS.md
	$(PY) -m corral bench --from BENCHMARKS.md --plot docs/benchmarks.png

# 5 minutes of a process pool and a queue under random SIGKILLs (a 20-second
# version runs in `make test`, tests/test_soak.py).
soak: build $(VENV)/.extra-test
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
lint: build $(TEST_EXTRAS) $(VENV)/.lint-ready
	cargo clippy --workspace --all-targets -- -D warnings
	cargo fmt --all -- --check
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(PY) -m mypy
	$(PY) -m mypy.stubtest corral._core --ignore-disjoint-bases --allowlist stubtest-allowlist.txt

# The interpreters that `make wheel` builds for: python3.X under pyenv, else
# on the PATH (a pyenv shim of a version not selected fails, so pyenv first).
PYENV_ROOT ?= $(HOME)/.pyenv
find-python = $(or $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python$(1)))),$(shell command -v python$(1)))
WHEEL_PYTHONS := $(foreach v,3.11 3.12 3.13,$(call find-python,$(v)))

$(VENV)/.wheel-ready: $(VENV)/.ready
	$(PIP) install -q "ziglang>=0.13" "auditwheel>=6"
	touch $@

# What `pip install corral` gets, into dist/: one wheel per CPython (3.11,
# 3.12, 3.13) tagged manylinux2014, linked by zig's cc against glibc 2.17's
# symbols whatever this machine's glibc (2.36 here), each checked by auditwheel
# (it fails on a symbol newer than its tag allows); and the sdist, itself built
# into a wheel once so that a broken sdist cannot ship.
wheel: $(VENV)/.wheel-ready
	rm -rf dist
	$(VENV)/bin/maturin build --release --zig --compatibility manylinux2014 --out dist $(addprefix -i ,$(WHEEL_PYTHONS))
	for w in dist/*.whl; do $(VENV)/bin/auditwheel show "$$w" | tr '\n' ' '; echo; \
		$(VENV)/bin/auditwheel show "$$w" | grep -q 'is consistent with the following platform tag: "manylinux_2_17_x86_64"'; done
	$(VENV)/bin/maturin sdist --out dist
	CARGO_TARGET_DIR=$(abspath target) $(PIP) wheel -q --no-deps --no-build-isolation -w target/sdist-check dist/*.tar.gz

clean:
	rm -rf $(VENV) target dist
