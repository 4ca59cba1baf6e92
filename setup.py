"""Build hook only: the cffi extension modules (metadata lives in pyproject.toml)."""

import os
import sys

from setuptools import setup

modules = ["csrc/ffi_native.py:ffi"]
if sys.platform == "darwin" or os.environ.get("ANETRAIN_OBJC") == "gnustep":
    modules.append("csrc/ffi_ane.py:ffi")

setup(cffi_modules=modules)
