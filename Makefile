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

.PHONY: all build demo test test-rust test-python test-torch bench soak lint docs wheel wheel-test clean

all: build

# The venv with what `make build` needs: maturin and corral's one dependency.
# Each target adds only what it uses, so the first `make demo` installs no
# Ray or Dask.
$(VENV)/.ready: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "maturin>=1.7,<2" "cloudpickle>=2.2"
	touch $@

# PYTHON $(install-extra) NAME: pip-installs pyproject.toml's extra NAME into
# PYTHON's environment (the lists of optional dependencies live there only:
# `corral[NAME]` for a user). .venv/.extra-NAME: done for .venv.
install-extra := -c 'import subprocess, sys, tomllib; extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *extras[sys.argv[1]]])'
$(VENV)/.extra-%: $(VENV)/.ready
	$(PY) $(install-extra) $*
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

# The tests that need torch (the `torch` extra: ~5.4 GB with the CUDA
# libraries PyPI's wheel pulls in, ~1 min here), which `make test` skips
# with the reason when torch is absent: those whose module or name says torch.
test-torch: build $(TEST_EXTRAS) $(VENV)/.extra-torch
	$(PY) -m pytest tests -q -k torch

# Bytecode cached as a user's programs have it: without it every fresh
# interpreter (a fork server, a spawn worker) compiles corral from source,
# about 20 ms more per pool start than a user sees (stop 23, measured).
bench: build $(VENV)/.extra-bench $(VENV)/.extra-ray $(VENV)/.extra-dask $(VENV)/.extra-torch
	PYTHONDONTWRITEBYTECODE= $(PY) -m corral bench --markdown BENCHMARKS.md
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
	$(PY) -m mypy --strict tests/typing  # user code as a type checker sees it (issue 14)
	$(PY) -m mypy.stubtest corral._core --ignore-disjoint-bases --allowlist stubtest-allowlist.txt

# The API reference, from the docstrings, into docs/api/ (docs/build.py:
# fails on a warning of pdoc or a public name without a docstring).
docs: build $(VENV)/.extra-docs
	$(PY) docs/build.py

# The interpreters the wheels are built for, and tested on (all but the first:
# `make test` runs the whole suite on 3.11): python3.X under pyenv, else on
# the PATH (a pyenv shim of a version not selected fails: pyenv first).
PYENV_ROOT ?= $(HOME)/.pyenv
find-python = $(or $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python$(1)))),$(shell command -v python$(1)))
WHEEL_PYTHONS := $(foreach v,3.11 3.12 3.13,$(call find-python,$(v)))

$(VENV)/.wheel-ready: $(VENV)/.ready
	$(PIP) install -q "ziglang>=0.13" "auditwheel>=6"
	touch $@

# What `pip install corral` gets, into dist/: one wheel per CPython (3.11,
# 3.12, 3.13; not abi3, measured slower) tagged manylinux2014, linked by zig's
# cc against glibc 2.17's symbols whatever this machine's glibc (2.36 here),
# each checked by auditwheel (it fails on a symbol newer than its tag allows);
# and the sdist, itself built into a wheel once so that a broken sdist cannot
# ship.
# zig links its own static libunwind where Rust asks for libgcc_s; but glibc
# unwinds a thread that CPython ends with pthread_exit (one waiting in the
# extension at interpreter exit) with libgcc_s, whose state that libunwind
# misreads: a segfault at every such exit (tests/test_packaging.py). So the
# extension is linked to the system's libgcc_s.so.1 (manylinux2014 allows
# it), which then provides every _Unwind_ function.
LIBGCC_S := $(shell gcc -print-file-name=libgcc_s.so.1)
wheel: $(VENV)/.wheel-ready
	rm -rf dist target/sdist-check
	$(VENV)/bin/maturin build --release --zig --compatibility manylinux2014 --out dist $(addprefix -i ,$(WHEEL_PYTHONS)) \
		-- -C link-arg=-Wl,--no-as-needed -C link-arg=$(LIBGCC_S)
	for w in dist/*.whl; do $(PY) -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
		sys.stdout.buffer.write(z.read(next(n for n in z.namelist() if n.startswith("corral/_core"))))' "$$w" > target/wheel-core.so; \
		readelf -d target/wheel-core.so | grep -q 'NEEDED.*libgcc_s.so.1' || { echo "$$w: not linked to libgcc_s"; exit 1; }; done
	for w in dist/*.whl; do out=$$($(VENV)/bin/auditwheel show "$$w" | tr -s '\n ' ' '); echo "$$out"; \
		case "$$out" in *'consistent with the following platform tag: "manylinux_2_17_x86_64"'*) ;; *) exit 1 ;; esac; done
	$(VENV)/bin/maturin sdist --out dist
	CARGO_TARGET_DIR=$(abspath target) $(PIP) wheel -q --no-deps --no-build-isolation -w target/sdist-check dist/*.tar.gz

# The wheels of `make wheel` for CPython 3.12 and 3.13, each installed into a
# fresh venv of its CPython (target/wheel-venv-3XY), run from there: without the [demo] extra the
# demo must fail naming the pip install; then, with [test], the packaging,
# pool, queue, sync and conformance suites and the README's snippets (`make
# test` runs the whole suite on 3.11, on the development build).
WHEEL_TESTS := tests/test_packaging.py tests/test_pool.py tests/test_queue.py tests/test_sync_conformance.py tests/test_sync_processes.py tests/test_readme.py

wheel-test:
	set -e; for py in $(wordlist 2,9,$(WHEEL_PYTHONS)); do \
		v=$$($$py -c 'import sys; print("%d%d" % sys.version_info[:2])'); env=target/wheel-venv-$$v; \
		echo "== CPython $$v: $$py"; \
		rm -rf $$env; $$py -m venv $$env; $$env/bin/pip install -q dist/corral-*-cp$$v-*.whl; \
		if $$env/bin/python -m corral demo --quick 2>$$env/demo.err; then echo "demo ran without its extra"; exit 1; fi; \
		grep "pip install 'corral\[demo\]'" $$env/demo.err; \
		$$env/bin/python $(install-extra) test; \
		$$env/bin/python -c 'import corral, sys; assert "site-packages" in corral.__file__, corral.__file__'; \
		$$env/bin/python -m pytest -q -p no:cacheprovider $(WHEEL_TESTS); \
	done

clean:
	rm -rf $(VENV) target dist
