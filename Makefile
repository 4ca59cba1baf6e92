# anetrain developer and CI entry points. `make test` is the one test command (README, .ci/run).
PYTHON ?= python
PIP     = $(PYTHON) -m pip
HAVE_GNUSTEP := $(shell command -v gnustep-config 2>/dev/null)
HAVE_ARM64CC := $(shell command -v aarch64-linux-gnu-gcc 2>/dev/null)

.PHONY: install build deps test ctest neon bench lint format clean help

help:
	@echo "make install   pip install . (the package, with its C core)"
	@echo "make build     editable in-place build (python/anetrain/_native*.so; + _ane with GNUstep)"
	@echo "make test      dev dependencies, build, C tests, pytest (the README's test command)"
	@echo "make bench     python -m anetrain.bench cpu"
	@echo "make lint      ruff + the Apple-dialect Objective-C lint when clang and GNUstep exist"
	@echo "make neon      exhaustive fp16 test of the NEON path under qemu-aarch64"
	@echo "make clean     remove build outputs"

install:
	$(PIP) install .

deps:
	$(PIP) install -q 'setuptools>=70.1' wheel 'cffi>=1.17' ruff
	$(PIP) install -q --no-build-isolation -e '.[test,data]'

# With GNUstep present (CI), the Objective-C runtime and the mock framework are built too.
ifdef HAVE_GNUSTEP
build: build-objc mock
else
build:
	$(PIP) install -q --no-build-isolation -e .
endif

build/test_fp16: csrc/fp16.c csrc/anet.h tests/c/test_fp16.c
	mkdir -p build
	gcc -std=c11 -O2 -Wall -Wextra -Icsrc csrc/fp16.c tests/c/test_fp16.c -o $@ -lm

ctest: build/test_fp16
	./build/test_fp16

# NEON is baseline on arm64; test it on x86 Linux with a cross compiler and qemu-user
# (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user).
neon:
	mkdir -p build
	aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Wextra -Icsrc csrc/fp16.c tests/c/test_fp16.c \
	  -o build/test_fp16_arm64 -lm
	qemu-aarch64 -L /usr/aarch64-linux-gnu build/test_fp16_arm64 neon

test: deps build ctest
ifdef HAVE_ARM64CC
	$(MAKE) neon
endif
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) -m anetrain.bench cpu

lint:
	$(PYTHON) -m ruff check python tests scripts csrc/*.py
ifdef HAVE_GNUSTEP
	$(MAKE) lint-objc
endif

format:
	$(PYTHON) -m ruff format python tests scripts csrc/*.py

clean:
	rm -rf build dist python/*.egg-info python/anetrain/_*.so python/anetrain/_native.c \
	  python/anetrain/_ane.m .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

include scripts/objc_targets.mk
