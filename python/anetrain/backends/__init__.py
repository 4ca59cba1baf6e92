"""Backend choice: cpu (fp32 numpy), sim (MIL on the ANE simulator), ane (MIL on the ANE)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from anetrain.backends import platform
from anetrain.backends.platform import ane_platform  # train.py asks it before numpy loads
from anetrain.config import ConfigError, ModelConfig

if TYPE_CHECKING:  # this module stays numpy-free to import (train.py asks before numpy loads)
    from anetrain.model import Kernels
    from anetrain.params import Params

__all__ = ["ane_platform", "make_kernels", "pick_backend"]


def pick_backend(name: str, verbose: bool = True, cfg: ModelConfig | None = None) -> str:
    """Resolve `auto` and reject backends this machine cannot run, with a clear reason.

    cfg: the model; auto then also picks cpu for sizes the ANE refuses (platform.ane_misfit),
    e.g. the default tiny preset, where --backend ane is an error that lists the rules broken.
    Platform checks and their messages: backends/platform.py.
    """
    if name == "auto":
        # only on Apple silicon: ANETRAIN_ANE_FRAMEWORK (the test mock) never makes auto pick ane
        if platform.apple_silicon():
            why = platform.old_macos() or platform.ane_unavailable()
            if why is None and cfg is not None:
                why = platform.ane_misfit(cfg)
        else:
            why = platform.ROSETTA if platform.under_rosetta() else "no Apple Neural Engine here"
        choice = "cpu" if why else "ane"
        if verbose:
            print(f"backend auto: using {choice} ({why or 'Apple Neural Engine found'})")
        return choice
    if name in ("cpu", "sim"):
        return name
    if name == "ane":
        why = platform.ane_unavailable()
        if why is not None:
            raise ConfigError(f"--backend ane: {why}; use --backend cpu (or sim to run the "
                              "ANE programs in the simulator)")
        old = platform.old_macos()
        if old is not None:  # not a hard error: nothing here has run on such a system
            print(f"warning: --backend ane: {old}; the kernels will probably not compile",
                  file=sys.stderr)  # fmt: skip
        return name
    raise ConfigError(f"unknown backend {name!r} (choose from auto, cpu, sim, ane)")


def make_kernels(backend: str, cfg: ModelConfig, params: Params,
                 threads: int | None = None) -> Kernels:  # fmt: skip
    """The model.Kernels of a resolved backend name: cpu.CpuKernels, or mil.MilKernels for sim
    and ane (the ten MIL programs compiled once). The real ANE refuses sizes that are not
    64/32-aligned or over its limits with a ConfigError (platform.ane_misfit); the simulator and
    a replacement framework named by ANETRAIN_ANE_FRAMEWORK (not strict, see runtime.AneRuntime)
    run them anyway, e.g. the tiny preset's hidden 176. Both refuse Qwen3's q/k norm, which the
    MIL kernels do not have yet.
    """
    if backend == "cpu":
        from anetrain.backends.cpu import CpuKernels

        return CpuKernels(cfg, params, threads=threads)
    if backend in ("sim", "ane"):
        from anetrain.backends.mil import MilKernels
        from anetrain.backends.runtime import AneRuntime, SimRuntime

        runtime = SimRuntime() if backend == "sim" else AneRuntime()
        try:
            return MilKernels(cfg, params, runtime, own_runtime=True)
        except BaseException:
            runtime.close()  # programs compiled before the failure are freed with it
            raise
    raise ConfigError(f"backend {backend!r} is not available")
