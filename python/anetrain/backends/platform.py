"""Where the ANE can run: Apple silicon, Rosetta, macOS version, framework, and the size rules."""

from __future__ import annotations

import os
import platform
import sys
from typing import TYPE_CHECKING

from anetrain.config import ConfigError

if TYPE_CHECKING:  # numpy-free to import: train.py asks ane_platform() before numpy loads
    from anetrain.config import ModelConfig

# ---- the machine ----------------------------------------------------------------------------


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


def ane_unavailable() -> str | None:
    """Why --backend ane cannot run here (None: it can). ANETRAIN_ANE_FRAMEWORK names a
    replacement framework (e.g. the Linux test mock) and lifts the macOS arm64 requirement."""
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


# ---- the model's sizes ----------------------------------------------------------------------
# The real ANE needs every surface width a multiple of 64 fp16 elements and every channel count
# a multiple of 32 (upstream.md §2.5); mil.kernels.build_specs(strict=True) checks each one. Its
# compiler also refuses what mil/check.py reports as errors, e.g. a tensor axis over 16384:
# mil.kernels.limit_errors lists those.

def misfit(cfg: ModelConfig, detail: str | None = None) -> str:
    """The one message for sizes that break the ANE's alignment rules; detail: the misaligned
    surfaces (build_specs' MilError text)."""
    from anetrain.mil.check import ALIGN_W
    from anetrain.mil.kernels import ALIGN_C

    why = (f"model dim {cfg.dim}, hidden {cfg.hidden_dim}, seq {cfg.seq_len} breaks the ANE's "
           f"alignment rules: widths must be multiples of {ALIGN_W} and channels of {ALIGN_C}")
    return why if detail is None else f"{why} ({detail})"


def over_limits(cfg: ModelConfig, errors: list[str]) -> str:
    """The one message for aligned sizes the ANE compiler still refuses (limit_errors)."""
    return (f"model dim {cfg.dim}, hidden {cfg.hidden_dim}, seq {cfg.seq_len} breaks the ANE's "
            f"size limits: {'; '.join(errors)}")  # fmt: skip


def misfit_error(backend: str, why: str) -> ConfigError:
    """What --backend `backend` raises for such sizes (MilKernels on a strict runtime)."""
    return ConfigError(f"--backend {backend}: {why}; use --backend sim or cpu for this size")


def ane_misfit(cfg: ModelConfig, detail: bool = False) -> str | None:
    """Why the real ANE cannot run this model (None: it can), checked without compiling: the
    alignment rules, then the compiler's limits
    (mil is imported here, not at module import: it needs numpy). detail: name every misaligned
    surface (the limits are always named: each is one tensor)."""
    from anetrain.mil.errors import MilError
    from anetrain.mil.kernels import build_specs, limit_errors

    try:
        specs = build_specs(cfg, strict=True)
    except MilError as e:
        return misfit(cfg, str(e) if detail else None)
    errors = limit_errors(specs)
    return over_limits(cfg, errors) if errors else None
