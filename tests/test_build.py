"""The build recipe: on macOS a failing Objective-C build must not take the cpu backend with it."""

from __future__ import annotations

import runpy
import subprocess
import sys
import textwrap

from conftest import ROOT


def test_macos_recipe_makes_ane_optional_and_links_its_libraries(monkeypatch):
    """csrc/ffi_ane.py as a Mac runs it (its darwin branch needs no toolchain to evaluate)."""
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "csrc"))
    ffi = runpy.run_path(str(ROOT / "csrc" / "ffi_ane.py"))["ffi"]
    name, _source, _, kw = ffi._assigned_source
    assert name == "anetrain._ane" and kw["optional"] is True
    link = " ".join(kw["extra_link_args"])
    for lib in ("-framework Foundation", "-framework CoreFoundation", "-framework IOSurface",
                "-lobjc", "-ldl"):  # fmt: skip
        assert lib in link, lib
    assert "-fno-objc-arc" in kw["extra_compile_args"]


def test_an_optional_cffi_module_that_fails_to_build_is_skipped(tmp_path):
    """The mechanism the Mac build relies on: set_source(optional=True) reaches setuptools'
    Extension, so a compile error there is a warning and the other modules still build."""
    (tmp_path / "ffi_ok.py").write_text(textwrap.dedent("""
        from cffi import FFI
        ffi = FFI()
        ffi.cdef("int ok(void);")
        ffi.set_source("ok_mod", "int ok(void) { return 7; }")
    """))
    (tmp_path / "ffi_broken.py").write_text(textwrap.dedent("""
        from cffi import FFI
        ffi = FFI()
        ffi.cdef("int broken(void);")
        ffi.set_source("broken_mod", "#error the Objective-C did not compile", optional=True)
    """))
    (tmp_path / "setup.py").write_text(
        "from setuptools import setup\n"
        "setup(name='t', version='0', py_modules=[],\n"
        "      cffi_modules=['ffi_ok.py:ffi', 'ffi_broken.py:ffi'])\n"
    )
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "the Objective-C did not compile" in r.stdout + r.stderr
    assert list(tmp_path.glob("ok_mod*.so")) and not list(tmp_path.glob("broken_mod*.so"))
