"""Helpers shared by the two cffi build recipes (ffi_native.py, ffi_ane.py)."""

import os


def cdef_from(path: str) -> str:
    """The header minus preprocessor lines: the public header is the single source of the cdef."""
    with open(path, encoding="utf-8") as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


def sanitize_flags() -> list[str]:
    """ANETRAIN_SANITIZE=address,undefined -> sanitizer flags for compile and link."""
    kinds = os.environ.get("ANETRAIN_SANITIZE", "").strip()
    if not kinds:
        return []
    return [f"-fsanitize={kinds}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
            "-O1", "-g"]
