"""cffi build recipe (API mode, out-of-line) for anetrain._ane, the Objective-C ANE runtime.

Built on macOS, and on Linux only with ANETRAIN_OBJC=gnustep (CI: gcc + GNUstep, a heap-backed
IOSurface stub, and the mock framework of tests/mock). A plain Linux install never runs this file,
so it needs no Objective-C toolchain (setup.py decides).
"""

import os
import shlex
import subprocess
import sys

from cffi import FFI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ffi_util import cdef_from, sanitize_flags  # noqa: E402

# setup.py runs this with cwd = project root; setuptools wants relative paths (ecosystem.md §1.3).
HEADER = "csrc/ane/ane_runtime.h"
SOURCES = ["csrc/ane/ane_runtime.m", "csrc/ane/ane_surface.m", "csrc/ane/ane_errors.m"]
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]

# Linux stub only: live/locked surface counters for the leak tests.
STUB_CDEF = "int iosurface_stub_live(void);\nint iosurface_stub_locked(void);\n"


def gnustep(flag: str) -> list[str]:
    """gnustep-config output without -MMD/-MP (stray .d files) and with its -I dirs as -isystem
    (quiet GNUstep headers under -Wextra); the cwd-relative -I. is dropped."""
    words = shlex.split(subprocess.check_output(["gnustep-config", flag], text=True))
    words = [w for w in words if w not in ("-MMD", "-MP", "-I.")]
    return ["-isystem" + w[2:] if w.startswith("-I/") else w for w in words]


if sys.platform == "darwin":
    sources = SOURCES
    include_dirs = ["csrc/ane"]
    cflags = CFLAGS + ["-fno-objc-arc", "-fobjc-exceptions"]  # MRC everywhere (ecosystem.md §2.5)
    # CoreFoundation (CFRetain) and libobjc (objc_msgSend) explicitly, not through Python's
    # -undefined dynamic_lookup; the private framework is dlopen()ed at run time
    ldflags = ["-framework", "Foundation", "-framework", "CoreFoundation", "-framework",
               "IOSurface", "-lobjc", "-ldl"]  # fmt: skip
    cdef = cdef_from(HEADER)
else:
    sources = SOURCES + ["csrc/compat/linux/iosurface_stub.m"]
    include_dirs = ["csrc/ane", "csrc/compat/linux"]  # the stub <IOSurface/IOSurface.h>
    cflags = gnustep("--objc-flags") + CFLAGS  # ours last: -O2/-std win over gnustep's
    ldflags = gnustep("--base-libs") + ["-ldl"]
    cdef = cdef_from(HEADER) + STUB_CDEF

ffi = FFI()
ffi.cdef(cdef)
ffi.set_source(
    "anetrain._ane",
    '#include "ane_runtime.h"\n' + ("" if sys.platform == "darwin" else
                                    "#include <IOSurface/IOSurface.h>\n"),
    sources=sources,
    source_extension=".m",  # the generated wrapper compiles as Objective-C too
    include_dirs=include_dirs,
    extra_compile_args=cflags + sanitize_flags(),  # a later -O1 overrides -O2 when sanitizing
    extra_link_args=ldflags + sanitize_flags(),
    # macOS: if the Objective-C does not build on some toolchain, setuptools warns and installs
    # the rest (cpu and sim backends; --backend ane then says _ane is not built). Asked for with
    # ANETRAIN_OBJC=gnustep (CI), a failure stays an error.
    optional=sys.platform == "darwin",
)
