"""cffi build recipe (API mode, out-of-line) for anetrain._native, the portable C core."""

import os

from cffi import FFI

# setup.py runs this with cwd = project root; setuptools wants relative paths (ecosystem.md §1.3).
HEADER = "csrc/anet.h"
SOURCES = ["csrc/fp16.c", "csrc/pack.c", "csrc/ops.c"]
CFLAGS = ["-std=c11", "-O3", "-Wall", "-Wextra", "-fvisibility=hidden"]


def cdef_from(path: str) -> str:
    """The header minus preprocessor lines: the public header is the single source of the cdef."""
    with open(path, encoding="utf-8") as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


def sanitize_flags() -> list[str]:
    """ANETRAIN_SANITIZE=address,undefined -> sanitizer flags for compile and link (§3.1)."""
    kinds = os.environ.get("ANETRAIN_SANITIZE", "").strip()
    if not kinds:
        return []
    return [f"-fsanitize={kinds}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
            "-O1", "-g"]


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
