"""Backend choice: cpu (fp32 numpy), sim (MIL on the ANE simulator), ane (MIL on the ANE)."""

from __future__ import annotations

import os
import platform
import sys
from typing import TYPE_CHECKING

from anetrain.config import ConfigError, ModelConfig

if TYPE_CHECKING:  # this module stays numpy-free to import (train.py asks before numpy loads)
    from anetrain.params import Params


def apple_silicon() -> bool:
    """macOS on arm64: the only place an ANE can be."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def under_rosetta() -> bool:
    """An x86_64 Python translated by Rosetta on an Apple-silicon Mac: the ANE is there, but
    an x86_64 process cannot use it (the fix is an arm64 Python)."""
    if sys.platform != "darwin" or platform.machine() != "x86_64":
        return False
    import subprocess

    try:  # 1 in a translated process; empty (-i: no error) on an Intel Mac
        out = subprocess.run(["/usr/sbin/sysctl", "-in", "sysctl.proc_translated"],
                             capture_output=True, text=True, timeout=5).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip() == "1"


ROSETTA = ("this Python is x86_64 running under Rosetta; the Apple Neural Engine needs an arm64 "
           "Python (python3 -c 'import platform; print(platform.machine())' must print arm64)")


# The ANE programs are MIL program(1.3) with the ios18 opset, which the reference system
# compiles on macOS 15 and 26 (upstream.md §9); older compilers predate the ios18 opset.
MIN_MACOS = (15, 0)


def macos_version() -> tuple[int, ...] | None:
    """This macOS as (major, minor), e.g. (15, 1); None on other systems."""
    if sys.platform != "darwin":
        return None
    try:
        return tuple(int(p) for p in platform.mac_ver()[0].split(".")[:2])
    except ValueError:
        return None


def old_macos() -> str | None:
    """Why this macOS is too old for the ANE programs (None: new enough, or not macOS)."""
    v = macos_version()
    if v is None or v >= MIN_MACOS:
        return None
    return (f"macOS {'.'.join(map(str, v))} predates the MIL ios18 opset the ANE programs use "
            f"(macOS {MIN_MACOS[0]} or later)")


def ane_platform() -> bool:
    """Apple silicon on a new-enough macOS: where auto looks for the ANE (cheap, numpy-free,
    no framework load; train.py asks it before numpy loads)."""
    return apple_silicon() and old_macos() is None


def _ane_unavailable_reason() -> str | None:
    """Why --backend ane cannot run here (None: it can). ANETRAIN_ANE_FRAMEWORK (tests) names
    a replacement framework, e.g. the Linux mock, and lifts the macOS arm64 requirement."""
    try:
        from anetrain.backends import ane
    except ImportError as e:  # pragma: no cover - the module imports without its extension
        return f"anetrain.backends.ane does not import ({e})"
    override = os.environ.get(ane.FRAMEWORK_ENV)
    if not override and not apple_silicon():
        if under_rosetta():
            return ROSETTA
        return (f"the Apple Neural Engine needs macOS on Apple silicon (this is {sys.platform} "
                f"{platform.machine()})")
    if not ane.built():
        return ("anetrain._ane is not built (on macOS `pip install -v .` shows why its build "
                "failed)")
    path = ane.resolve_framework_path()
    if not ane.available(path):
        return f"the ANE framework {path} does not load"
    return None


def pick_backend(name: str, verbose: bool = True, cfg: ModelConfig | None = None) -> str:
    """Resolve `auto` and reject backends this machine cannot run, with a clear reason.

    cfg: the model; auto then also picks cpu for sizes the ANE refuses (kernels_mil.ane_fits),
    e.g. the default tiny preset, where --backend ane is an error that lists the rules broken.
    """
    if name == "auto":
        # only on Apple silicon: ANETRAIN_ANE_FRAMEWORK (the test mock) never makes auto pick ane
        if apple_silicon():
            why = old_macos() or _ane_unavailable_reason()
            if why is None and cfg is not None:
                from anetrain.backends.mil import ane_fits

                if not ane_fits(cfg):
                    why = (f"model dim {cfg.dim}, hidden {cfg.hidden_dim}, seq {cfg.seq_len} "
                           "breaks the ANE's alignment rules; --backend ane lists them")
        else:
            why = ROSETTA if under_rosetta() else "no Apple Neural Engine here"
        choice = "cpu" if why else "ane"
        if verbose:
            print(f"backend auto: using {choice} ({why or 'Apple Neural Engine found'})")
        return choice
    if name in ("cpu", "sim"):
        return name
    if name == "ane":
        why = _ane_unavailable_reason()
        if why is not None:
            raise ConfigError(f"--backend ane: {why}; use --backend cpu (or sim to run the "
                              "ANE programs in the simulator)")
        old = old_macos()
        if old is not None:  # not a hard error: nothing here has run on such a system
            print(f"warning: --backend ane: {old}; the kernels will probably not compile",
                  file=sys.stderr)  # fmt: skip
        return name
    raise ConfigError(f"unknown backend {name!r} (choose from auto, cpu, sim, ane)")


def make_kernels(backend: str, cfg: ModelConfig, params: Params, threads: int | None = None):
    """A Kernels object (see kernels_cpu.py for the interface) for a resolved backend name.

    sim and ane compile the ten MIL kernels once (kernels_mil.MilKernels). The real ANE refuses
    sizes that are not 64/32-aligned with a ConfigError; the simulator and the test-only mock
    (ANETRAIN_ANE_FRAMEWORK) run them anyway, e.g. the tiny preset's hidden 176.
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
            runtime.close()  # kernels compiled before the failure are freed with it
            raise
    raise ConfigError(f"backend {backend!r} is not available")
