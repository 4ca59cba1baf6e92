"""cffi build recipe (API mode, out-of-line) for anetrain._native, the portable C core."""

import os
import sys

from cffi import FFI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ffi_util import cdef_from, sanitize_flags  # noqa: E402

# setup.py runs this with cwd = project root; setuptools wants relative paths (ecosystem.md §1.3).
HEADER = "csrc/anet.h"
SOURCES = ["csrc/fp16.c", "csrc/pack.c", "csrc/ops.c"]
# -ffp-contract=off: clang (Apple's too) fuses a*b+c into fma by default, gcc -std=c11 does not;
# the SIMD loops and their scalar tails must round alike, so no compiler may fuse.
CFLAGS = ["-std=c11", "-O3", "-ffp-contract=off", "-Wall", "-Wextra", "-fvisibility=hidden"]


ffi = FFI()
ffi.cdef(cdef_from(HEADER))
ffi.set_source(
    "anetrain._native",
    '#include "anet.h"',
    sources=SOURCES,
    include_dirs=["csrc"],
    extra_compile_args=CFLAGS + sanitize_flags(),  # later -O1 overrides -O3 when sanitizing
    extra_link_args=sanitize_flags(),
    libraries=["m"],
)
