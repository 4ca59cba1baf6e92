"""Low-level Python wrapper of the Objective-C ANE runtime (anetrain._ane; C API in
csrc/ane/ane_runtime.h).

    with AneDevice() as dev, dev.compile(mil, {"@model_path/weights/w.bin": w}, n_in, n_out) as e:
        x, y = Surface(n_in), Surface(n_out)
        req = e.request(x, y)          # reusable for every evaluation
        x.write(inp); e.eval(req); out = y.read()

AneDevice opens the framework; Executable is one compiled and loaded MIL program (upstream.md
§1.4); Surface is one flat IOSurface (§2.1); Request binds (executable, input, output). Every
failure of the runtime raises AneError carrying its message: NSErrors read "<domain> (<code>):
<description>". Objects free their C side in free()/close() or at the end of a `with` block (and,
as a fallback, when garbage-collected). One object must not be used from two threads at once;
separate objects may.

Test-only knob: ANETRAIN_ANE_FRAMEWORK=path replaces the default framework (the system
AppleNeuralEngine.framework) with another binary, e.g. the mock build/mock/libane_mock.so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Mapping

import numpy as np

from anetrain.errors import UserError

try:
    from anetrain import _ane

    ffi, lib = _ane.ffi, _ane.lib
except ImportError:  # not built: a plain Linux install (needs macOS or ANETRAIN_OBJC=gnustep)
    _ane = ffi = lib = None

if _ane is not None and sys.platform != "darwin":
    # Linux builds carry the IOSurface stub. Promote the extension to RTLD_GLOBAL so a dlopen()ed
    # framework (the mock) binds to this one stub, as every framework in a macOS process binds to
    # the one IOSurface.framework; otherwise each .so would count and free surfaces on its own.
    ctypes.CDLL(_ane.__file__, mode=os.RTLD_NOW | os.RTLD_GLOBAL | os.RTLD_NOLOAD)

SYSTEM_FRAMEWORK = (
    "/System/Library/PrivateFrameworks/AppleNeuralEngine.framework/AppleNeuralEngine"
)
FRAMEWORK_ENV = "ANETRAIN_ANE_FRAMEWORK"
ERR_LEN = 8192  # the NSError text of a rejected program carries the compiler's detail

__all__ = ["AneDevice", "AneError", "Executable", "Request", "Surface", "available", "built"]


class AneError(UserError, RuntimeError):
    """A failure reported by the ANE runtime (dlopen, NSError, Objective-C exception, bounds...)."""


# ---- helpers --------------------------------------------------------------------------------


def built() -> bool:
    """True when the Objective-C extension anetrain._ane is built and importable."""
    return lib is not None


def _require() -> None:
    if lib is None:
        raise AneError("anetrain._ane is not built (it is built on macOS, where `pip install -v .` "
                       "shows why its build failed, and on Linux only with ANETRAIN_OBJC=gnustep "
                       "against GNUstep)")


def _err():
    return ffi.new("char[]", ERR_LEN)


def _msg(err) -> str:
    return ffi.string(err).decode("utf-8", errors="replace") or "unknown ANE runtime error"


def _check(rc: int, err) -> None:
    if rc < 0:
        raise AneError(_msg(err))


def _ptr(p, err):
    if p == ffi.NULL:
        raise AneError(_msg(err))
    return p


def _bytes_view(data, what: str):
    """A read-only uint8 cdata over a bytes-like object or C-contiguous numpy array (no copy)."""
    if isinstance(data, np.ndarray) and not data.flags.c_contiguous:
        raise ValueError(f"{what}: numpy array must be C-contiguous")
    return ffi.from_buffer("uint8_t[]", data)


def resolve_framework_path(path: str | None = None) -> str:
    """The framework binary: `path`, else $ANETRAIN_ANE_FRAMEWORK (tests), else the system's."""
    return path or os.environ.get(FRAMEWORK_ENV) or SYSTEM_FRAMEWORK


_available: dict[str, bool] = {}


def available(path: str | None = None) -> bool:
    """True when the extension is built and the framework opens with all four private classes."""
    if lib is None:
        return False
    p = resolve_framework_path(path)
    if p not in _available:
        try:
            AneDevice(p).close()
            _available[p] = True
        except AneError:
            _available[p] = False
    return _available[p]


# ---- device ---------------------------------------------------------------------------------


class _Handle:
    """Owns one C object: _live() returns it or raises AneError once freed; free() releases it
    once (idempotent; also on `with` exit and garbage collection)."""

    _h = None  # the C pointer; None when freed (or when __init__ failed before setting it)
    _free_fn = ""  # the lib function that releases it
    _gone = "is freed"

    def _live(self):
        if self._h is None:
            raise AneError(f"{type(self).__name__} {self._gone}")
        return self._h

    def free(self) -> None:
        h, self._h = self._h, None
        if h is not None and lib is not None:
            getattr(lib, self._free_fn)(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    def __del__(self) -> None:
        self.free()


class AneDevice(_Handle):
    """The opened framework: its four classes and a count of successful compiles (the ~119 per
    process budget, upstream.md §1.7). Programs keep the C context alive after close()."""

    _free_fn, _gone = "ane_close", "is closed"

    def __init__(self, framework_path: str | None = None) -> None:
        _require()
        self.framework_path = resolve_framework_path(framework_path)
        err = _err()
        self._h = _ptr(lib.ane_open(self.framework_path.encode(), err, ERR_LEN), err)

    @property
    def compile_count(self) -> int:
        return lib.ane_compile_count(self._live())

    def compile(self, mil: str | bytes, weights: Mapping[str, bytes] | None, in_bytes: int,
                out_bytes: int) -> Executable:
        """Compile and load one MIL program; see Executable."""
        return Executable(self, mil, weights, in_bytes, out_bytes)

    def close(self) -> None:
        self.free()


# ---- surfaces -------------------------------------------------------------------------------


class Surface(_Handle):
    """One IOSurface of exactly `nbytes` bytes (fp16 tensors: 2 bytes per element, [C, S]
    channel-first, upstream.md §2.3). write/read/copy_from lock and unlock around the copy."""

    _free_fn = "ane_surface_free"

    def __init__(self, nbytes: int) -> None:
        _require()
        err = _err()
        self._h = _ptr(lib.ane_surface_new(int(nbytes), err, ERR_LEN), err)
        self.nbytes = int(nbytes)

    def write(self, data, offset: int = 0) -> None:
        """Copy bytes-like data or a C-contiguous numpy array into the surface at byte `offset`."""
        src = _bytes_view(data, "Surface.write")
        err = _err()
        _check(lib.ane_surface_write(self._live(), offset, src, len(src), err, ERR_LEN), err)

    def read(self, n: int | None = None, offset: int = 0) -> bytes:
        """n bytes (default: to the end) from byte `offset`."""
        n = self.nbytes - offset if n is None else n
        if n < 0:
            raise AneError(f"Surface.read: offset {offset} is past the {self.nbytes}-byte surface")
        dst = ffi.new("uint8_t[]", max(n, 1))
        err = _err()
        _check(lib.ane_surface_read(self._live(), offset, dst, n, err, ERR_LEN), err)
        return ffi.buffer(dst, n)[:]

    def read_array(self, dtype=np.uint16, offset: int = 0, count: int = -1) -> np.ndarray:
        """A copy of the surface (from byte `offset`) as a numpy array; fp16 data -> np.float16."""
        itemsize = np.dtype(dtype).itemsize
        n = (self.nbytes - offset) // itemsize if count < 0 else count
        return np.frombuffer(self.read(n * itemsize, offset), dtype=dtype).copy()

    def copy_from(self, src: Surface, n: int | None = None, offset: int = 0,
                  src_offset: int = 0) -> None:
        """Copy n bytes (default: all of src from src_offset) of src into this surface."""
        n = src.nbytes - src_offset if n is None else n
        err = _err()
        _check(lib.ane_surface_copy(self._live(), offset, src._live(), src_offset, max(n, 0), err,
                                    ERR_LEN), err)

    @contextlib.contextmanager
    def locked(self, read_only: bool = False, dtype=np.uint16) -> Iterator[np.ndarray]:
        """Lock the surface and yield a numpy view of it (no copy; read-only when read_only).
        The view must not be used after the block: the surface is unlocked then."""
        s = self._live()
        err = _err()
        base = _ptr(lib.ane_surface_lock(s, int(read_only), err, ERR_LEN), err)
        try:
            n = self.nbytes // np.dtype(dtype).itemsize
            view = np.frombuffer(ffi.buffer(base, self.nbytes), dtype=dtype, count=n)
            view.flags.writeable = not read_only
            yield view
        finally:
            _check(lib.ane_surface_unlock(s, int(read_only), err, ERR_LEN), err)



# ---- programs and requests ------------------------------------------------------------------


class Executable(_Handle):
    """One MIL program, compiled and loaded (upstream.md §1.4).

    mil: MIL text (str, or UTF-8 bytes). weights: {BLOBFILE path ("@model_path/weights/x.bin"):
    blob file bytes}, or None for none. in_bytes/out_bytes: exact sizes of the single input and
    output tensors. free() unloads it and removes its temp dir."""

    _free_fn = "ane_free"

    def __init__(self, device: AneDevice, mil: str | bytes, weights: Mapping[str, bytes] | None,
                 in_bytes: int, out_bytes: int) -> None:
        _require()
        self.device = device
        mil_b = mil.encode("utf-8") if isinstance(mil, str) else bytes(mil)
        items = list((weights or {}).items())
        keep = [ffi.new("char[]", name.encode("utf-8")) for name, _ in items]
        blobs = [_bytes_view(blob, f"weight {name}") for name, blob in items]
        names = ffi.new("const char *[]", keep) if items else ffi.NULL
        data = ffi.new("const uint8_t *[]", blobs) if items else ffi.NULL
        sizes = ffi.new("size_t[]", [len(b) for b in blobs]) if items else ffi.NULL
        err = _err()
        k = lib.ane_compile(device._live(), mil_b, len(mil_b), len(items), names, data, sizes,
                            int(in_bytes), int(out_bytes), err, ERR_LEN)
        self._h = _ptr(k, err)
        self.in_bytes, self.out_bytes = int(in_bytes), int(out_bytes)
        self.hex = ffi.string(lib.ane_kernel_hex(k)).decode()
        self.tmp_dir = ffi.string(lib.ane_kernel_dir(k)).decode()

    def request(self, inp: Surface, out: Surface) -> Request:
        """A reusable request evaluating this program from `inp` into `out`."""
        return Request(self, inp, out)

    def eval(self, request: Request) -> None:
        """Run once, synchronously: when it returns, request.out holds the result."""
        err = _err()
        _check(lib.ane_eval(self._live(), request._live(), err, ERR_LEN), err)



class Request(_Handle):
    """(executable, input surface, output surface) for repeated evaluation; sizes must match the
    program's. Holds its own references to both surfaces."""

    _free_fn = "ane_request_free"

    def __init__(self, executable: Executable, inp: Surface, out: Surface) -> None:
        err = _err()
        self._h = _ptr(lib.ane_request_new(executable._live(), inp._live(), out._live(), err,
                                           ERR_LEN), err)
        self.executable, self.inp, self.out = executable, inp, out

    def eval(self) -> None:
        self.executable.eval(self)
