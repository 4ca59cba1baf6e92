"""Backend choice: cpu (fp32 numpy), sim (MIL on the ANE simulator), ane (MIL on the ANE)."""

from __future__ import annotations

import platform
import sys

from anetrain.config import ConfigError, ModelConfig
from anetrain.params import Params


def ane_supported() -> bool:
    """True on macOS arm64 when the Objective-C runtime is built and the ANE framework loads."""
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return False
    try:
        from anetrain import ane
    except ImportError:
        return False
    return bool(getattr(ane, "available", lambda: False)())


def pick_backend(name: str, verbose: bool = True) -> str:
    """Resolve `auto` and reject backends this machine cannot run, with a clear reason."""
    if name == "auto":
        choice = "ane" if ane_supported() else "cpu"
        if verbose:
            why = "Apple Neural Engine found" if choice == "ane" else "no Apple Neural Engine here"
            print(f"backend auto: using {choice} ({why})")
        return choice
    if name == "cpu":
        return name
    if name in ("sim", "ane"):
        raise ConfigError(
            f"--backend {name}: the MIL training kernels are not wired into "
            "training yet; use --backend cpu"
        )
    raise ConfigError(f"unknown backend {name!r} (choose from auto, cpu, sim, ane)")


def make_kernels(backend: str, cfg: ModelConfig, params: Params):
    """A Kernels object (see kernels_cpu.py for the interface) for a resolved backend name."""
    if backend == "cpu":
        from anetrain.kernels_cpu import CpuKernels

        return CpuKernels(cfg, params)
    raise ConfigError(f"backend {backend!r} is not available")
