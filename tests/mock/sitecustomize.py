"""Test support for child processes: the ANE mock evaluates through the simulator there too.

Python imports `sitecustomize` at start-up from sys.path, so a test that puts tests/mock first
on PYTHONPATH and sets ANETRAIN_ANE_FRAMEWORK to the mock gets, in that child and in every
process it starts, what the in-process tests get from mock_control.use_simulator():

    ANETRAIN_ANE_FRAMEWORK=build/mock/libane_mock.so PYTHONPATH=tests/mock:python \\
        python -m anetrain.train --backend ane --model tiny --steps 5 --out /tmp/x --overwrite

Nothing is imported at start-up. The bridge is installed right after anetrain.backends.ane is
imported: that module promotes anetrain._ane to RTLD_GLOBAL, which must precede the dlopen() of
the mock, and train.py sizes the BLAS thread pools before numpy loads. (This file replaces any
other sitecustomize on the path; the test environment has none.)
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

FRAMEWORK_ENV = "ANETRAIN_ANE_FRAMEWORK"  # anetrain.backends.ane.FRAMEWORK_ENV
TRIGGER = "anetrain.backends.ane"


class _InstallAfter(importlib.abc.Loader):
    """The module's own loader, then mock_control.install_simulator()."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        import mock_control  # next to this file, on sys.path

        mock_control.install_simulator(os.environ[FRAMEWORK_ENV])


class _WaitForAne(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of TRIGGER, once."""

    def find_spec(self, name, path, target=None):
        if name != TRIGGER:
            return None
        sys.meta_path.remove(self)  # once, and not in the way of the lookup below
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _InstallAfter(spec.loader)
        return spec


if os.environ.get(FRAMEWORK_ENV):
    sys.meta_path.insert(0, _WaitForAne())
