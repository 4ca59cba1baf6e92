# objc_targets.mk — Objective-C targets (ANE runtime, GNUstep mock, Apple-dialect lint); included
# from the Makefile. Linux needs: apt-get install gobjc libgnustep-base-dev (+ clang for lint-objc).
PYTHON      ?= python
OBJC_CC     ?= gcc
OBJC_CFLAGS  = $(patsubst -I/%,-isystem/%,$(filter-out -MMD -MP -I.,$(shell gnustep-config --objc-flags))) \
               -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Icsrc/ane -Icsrc/compat/linux
OBJC_LIBS    = $(shell gnustep-config --base-libs)
OBJC_SRCS    = csrc/ane/ane_runtime.m csrc/ane/ane_surface.m csrc/ane/ane_errors.m \
               csrc/compat/linux/iosurface_stub.m
OBJC_HDRS    = csrc/ane/ane_private.h csrc/ane/objc_compat.h csrc/ane/ane_runtime.h \
               csrc/ane/ane_internal.h \
               csrc/compat/linux/IOSurface/IOSurface.h
MOCK_SO      = build/mock/libane_mock.so

.PHONY: build-objc mock test-objc lint-objc

# the package with anetrain._ane built against GNUstep (editable, in place)
build-objc:
	ANETRAIN_OBJC=gnustep $(PYTHON) -m pip install -q --no-build-isolation -e .

# the mock AppleNeuralEngine.framework; IOSurface symbols stay undefined on purpose: they bind to
# the one stub inside anetrain._ane (python/anetrain/ane.py promotes it to RTLD_GLOBAL)
mock: $(MOCK_SO)
$(MOCK_SO): tests/mock/ane_mock.m $(OBJC_HDRS)
	mkdir -p build/mock
	$(OBJC_CC) $(OBJC_CFLAGS) -shared -o $@ tests/mock/ane_mock.m $(OBJC_LIBS)

test-objc: build-objc mock
	$(PYTHON) -m pytest -q tests/test_ane_mock.py

# the Apple (modern runtime) dialect as a syntax check; gcc does not know its rules
lint-objc:
	clang -fobjc-runtime=macosx-13.0 -fsyntax-only -Wall -Wextra -Wno-unused-parameter \
	  -Wundeclared-selector -Werror \
	  $(filter-out -std=gnu11,$(OBJC_CFLAGS)) -std=gnu11 -idirafter $$(gcc -print-file-name=include) \
	  $(OBJC_SRCS) tests/mock/ane_mock.m
