"""The Objective-C ANE runtime (anetrain._ane via backends.ane) against the GNUstep mock framework.

Needs `ANETRAIN_OBJC=gnustep pip install --no-build-isolation -e .` and `make mock`; skipped
otherwise. The mock implements the private classes under their real names (tests/mock/ane_mock.m).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import MOCK_SO, ROOT, mock_framework

ane = pytest.importorskip("anetrain.backends.ane")
if not ane.built():
    pytest.skip("anetrain._ane is not built (ANETRAIN_OBJC=gnustep pip install -e .)",
                allow_module_level=True)

if not MOCK_SO.exists():
    pytest.skip(f"{MOCK_SO.relative_to(ROOT)} is not built (make mock)", allow_module_level=True)

DOMAIN = "com.apple.appleneuralengine"
W_KEY = "@model_path/weights/w.bin"


@pytest.fixture(scope="module")
def mock():
    return mock_framework()


@pytest.fixture(autouse=True)
def clean_mock(mock):
    mock.reset(reset_compiles=True)
    yield
    mock.reset(reset_compiles=True)


@pytest.fixture
def dev(mock):
    with ane.AneDevice(str(MOCK_SO)) as d:
        yield d


def mil_text(tag: str) -> str:
    """The mock does not parse MIL; distinct text gives a distinct hexStringIdentifier."""
    return f'program(1.3)\n{{\n    func main<ios18>() [name=string("{tag}")]\n}}\n'


def scale_bias(mil, weights, x, y):
    """Eval callback: y = 2*x + bias (fp16), bias = the w.bin blob as fp16."""
    bias = np.frombuffer(weights[W_KEY], dtype=np.float16)
    y.view(np.float16)[:] = x.view(np.float16) * np.float16(2) + bias


def temp_entries(kernel_dir: str) -> set[str]:
    return set(os.listdir(os.path.dirname(kernel_dir)))


def open_in_fresh_process(path: str) -> str:
    """The AneError text of AneDevice(path) in a new interpreter (classes are process-wide)."""
    code = ("import sys, anetrain.backends.ane as a\n"
            "try:\n    a.AneDevice(sys.argv[1])\nexcept a.AneError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                       timeout=60)
    return r.stdout + r.stderr


# ---- framework ------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="the real framework exists on macOS")
def test_real_framework_path_fails_cleanly():
    with pytest.raises(ane.AneError, match=r"dlopen\(/System/Library/PrivateFrameworks/"
                                           r"AppleNeuralEngine\.framework/AppleNeuralEngine\)"):
        ane.AneDevice(ane.SYSTEM_FRAMEWORK)
    assert not ane.available(ane.SYSTEM_FRAMEWORK)


def test_missing_class_is_named():
    # A loadable .so without the private classes (the extension itself), in a fresh process: once
    # the mock is loaded its classes are registered process-wide, whichever file is opened.
    msg = open_in_fresh_process(ane._ane.__file__)
    assert "ane_open: class _ANEInMemoryModelDescriptor not found in" in msg


def test_env_var_points_default_at_mock(monkeypatch, mock):
    monkeypatch.setenv(ane.FRAMEWORK_ENV, str(MOCK_SO))
    with ane.AneDevice() as d:
        assert d.framework_path == str(MOCK_SO)
        assert ane.available()


def test_one_mock_instance_for_runtime_and_control(dev, mock):
    with dev.compile(mil_text("one"), None, 16, 16):
        assert mock.compiles() == 1 and mock.loaded_models() == 1
    assert mock.calls("compile") == 1 and mock.calls("unload") == 1


# ---- compile / eval / free ------------------------------------------------------------------


def test_compile_write_eval_read_through_callback(dev, mock):
    seen = {}

    def cb(mil, weights, x, y):
        seen["mil"], seen["weights"] = mil, dict(weights)
        scale_bias(mil, weights, x, y)

    mock.set_eval_callback(cb)
    n = 64  # fp16 elements, [C=1, S=64]
    bias = np.arange(n, dtype=np.float16) / 8
    x = np.linspace(-4, 4, n).astype(np.float16)
    mil = mil_text("scale_bias")
    with dev.compile(mil, {W_KEY: bias.tobytes()}, 2 * n, 2 * n) as k, \
            ane.Surface(2 * n) as si, ane.Surface(2 * n) as so, k.request(si, so) as req:
        si.write(x)
        k.eval(req)
        y = so.read_array(np.float16)
        np.testing.assert_array_equal(y, x * np.float16(2) + bias)
        assert seen["mil"] == mil and seen["weights"] == {W_KEY: bias.tobytes()}
        # the request is reusable and sees new input
        si.write(np.zeros(n, np.float16))
        req.eval()
        np.testing.assert_array_equal(so.read_array(np.float16), bias)
    assert mock.live_surfaces() == 0 and mock.locked_surfaces() == 0


def test_default_eval_copies_input(dev):
    with dev.compile(mil_text("copy"), {}, 8, 12) as k, ane.Surface(8) as si, \
            ane.Surface(12) as so, k.request(si, so) as req:
        so.write(b"\xff" * 12)
        si.write(b"abcdefgh")
        k.eval(req)
        assert so.read() == b"abcdefgh\0\0\0\0"


def test_temp_dir_prepopulated_and_removed(dev, mock):
    blobs = {W_KEY: b"\x01\x02\x03\x04", "@model_path/weights/sub/deep/b.bin": b"xyz"}
    mil = mil_text("files")
    k = dev.compile(mil, blobs, 4, 4)
    d = Path(k.tmp_dir)
    assert d.name == k.hex and len(k.hex) > 0
    assert (d / "model.mil").read_text() == mil
    assert (d / "weights" / "w.bin").read_bytes() == blobs[W_KEY]
    assert (d / "weights" / "sub" / "deep" / "b.bin").read_bytes() == b"xyz"
    k.free()
    assert not d.exists()
    k.free()  # idempotent


def test_identical_kernels_share_dir_until_last_free(dev):
    k1 = dev.compile(mil_text("twin"), {W_KEY: b"ab"}, 4, 4)
    k2 = dev.compile(mil_text("twin"), {W_KEY: b"ab"}, 4, 4)
    assert k1.tmp_dir == k2.tmp_dir  # upstream.md §1.8
    k1.free()
    assert os.path.isdir(k2.tmp_dir)
    k2.free()
    assert not os.path.exists(k2.tmp_dir) and not os.path.exists(k2.tmp_dir + ".lock")
    with dev.compile(mil_text("twin"), {W_KEY: b"ac"}, 4, 4) as k3:
        assert k3.hex != k1.hex  # weights are part of the id


def test_another_process_keeps_a_shared_dir(dev):
    """Two runs of one model share the temp dirs (same hex): neither removes them under the
    other. A second interpreter compiles the same kernel and holds it until told to free it."""
    code = ("import sys, anetrain.backends.ane as a\n"
            "d = a.AneDevice(sys.argv[1])\n"
            f"k = d.compile({mil_text('across')!r}, {{{W_KEY!r}: b'ab'}}, 4, 4)\n"
            "print(k.tmp_dir, flush=True)\n"
            "sys.stdin.readline()\n"
            "k.free()\n")
    other = subprocess.Popen([sys.executable, "-c", code, str(MOCK_SO)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        shared = other.stdout.readline().strip()
        k = dev.compile(mil_text("across"), {W_KEY: b"ab"}, 4, 4)
        assert k.tmp_dir == shared and os.path.exists(shared + ".lock")
        k.free()
        assert (Path(shared) / "weights" / "w.bin").read_bytes() == b"ab"  # still in use there
        other.stdin.write("free\n")
        other.stdin.flush()
        assert other.wait(timeout=60) == 0
    finally:
        other.kill()
    assert not os.path.exists(shared) and not os.path.exists(shared + ".lock")
    with dev.compile(mil_text("across"), {W_KEY: b"ab"}, 4, 4) as k:  # a stale lock is harmless
        assert (Path(k.tmp_dir) / "model.mil").exists()
    assert not os.path.exists(k.tmp_dir + ".lock")


def test_request_keeps_surfaces_alive(dev, mock):
    with dev.compile(mil_text("keep"), {}, 4, 4) as k:
        si, so = ane.Surface(4), ane.Surface(4)
        si.write(b"1234")
        req = k.request(si, so)
        si.free()
        assert mock.live_surfaces() == 2
        k.eval(req)
        assert so.read() == b"1234"  # default mock eval copies
        req.free()
        so.free()
    assert mock.live_surfaces() == 0


def test_locked_numpy_view(dev, mock):
    with ane.Surface(16) as s:
        with s.locked() as v:
            assert v.dtype == np.uint16 and v.shape == (8,)
            assert mock.locked_surfaces() == 1
            v[:] = np.arange(8, dtype=np.uint16)
        assert mock.locked_surfaces() == 0
        with s.locked(read_only=True) as v:
            assert not v.flags.writeable
            np.testing.assert_array_equal(v, np.arange(8))
        t = ane.Surface(16)
        t.copy_from(s, 4, offset=12, src_offset=2)
        assert t.read(4, 12) == s.read(4, 2)
        s.copy_from(s, 4, offset=0, src_offset=8)  # same surface: memmove
        assert s.read(4, 0) == s.read(4, 8)
        t.free()
    assert mock.live_surfaces() == 0 and mock.locked_surfaces() == 0


def test_compile_count_is_exact(dev, mock):
    kernels = [dev.compile(mil_text(f"count{i}"), {}, 4, 4) for i in range(3)]
    mock.fail("compile")
    with pytest.raises(ane.AneError):
        dev.compile(mil_text("count_fail_compile"), {}, 4, 4)
    mock.fail("load", count=2)
    with pytest.raises(ane.AneError):
        dev.compile(mil_text("count_fail_load"), {}, 4, 4)
    assert dev.compile_count == 3
    for k in kernels:
        k.free()
    assert dev.compile_count == 3  # freeing gives nothing back (upstream.md §1.7)


# ---- injected failures ----------------------------------------------------------------------


def test_compile_error_reports_nserror_and_cleans_up(dev, mock):
    base = mock.live_objects()
    with dev.compile(mil_text("probe"), {}, 4, 4) as probe:
        tmp_root = os.path.dirname(probe.tmp_dir)
    before = set(os.listdir(tmp_root))
    mock.fail("compile", code=11, description="mock compiler rejected MIL")
    with pytest.raises(ane.AneError) as e:
        dev.compile(mil_text("bad"), {W_KEY: b"\0\0"}, 4, 4)
    assert f"{DOMAIN} (11): mock compiler rejected MIL" in str(e.value)
    assert "compileWithQoS" in str(e.value)
    assert set(os.listdir(tmp_root)) == before
    assert mock.live_objects() == base and mock.loaded_models() == 0
    assert dev.compile_count == 1


def test_load_is_retried_once(dev, mock):
    mock.fail("load", count=1, code=3, description="slot busy")
    with dev.compile(mil_text("retry"), {}, 4, 4):
        assert mock.calls("load") == 2
    mock.fail("load", count=2, code=3, description="no free ANE slot")
    with pytest.raises(ane.AneError, match=rf"after one retry.*{DOMAIN} \(3\): no free ANE slot"):
        dev.compile(mil_text("retry2"), {}, 4, 4)
    assert mock.loaded_models() == 0


def test_eval_error_reports_nserror(dev, mock):
    with dev.compile(mil_text("evalerr"), {}, 4, 4) as k, ane.Surface(4) as si, \
            ane.Surface(4) as so, k.request(si, so) as req:
        mock.fail("eval", code=6, description="program inference error")
        with pytest.raises(ane.AneError, match=rf"{DOMAIN} \(6\): program inference error"):
            k.eval(req)
        k.eval(req)  # the fault was one-shot


def test_eval_callback_exception_becomes_ane_error(dev, mock):
    def boom(mil, weights, x, y):
        raise ValueError("kernel exploded")

    mock.set_eval_callback(boom)
    with dev.compile(mil_text("boom"), {}, 4, 4) as k, ane.Surface(4) as si, \
            ane.Surface(4) as so, k.request(si, so) as req:
        with pytest.raises(ane.AneError, match=rf"{DOMAIN} \(1\): program failed: "
                                               "ValueError: kernel exploded"):
            k.eval(req)
        assert mock.locked_surfaces() == 0


def test_nil_descriptor(dev, mock):
    mock.fail("descriptor")
    with pytest.raises(ane.AneError, match="modelWithMILText:weights:optionsPlist: returned nil"):
        dev.compile(mil_text("nil"), {}, 4, 4)


@pytest.mark.parametrize("stage", ["compile", "load", "eval"])
def test_objc_exception_is_caught(dev, mock, stage):
    base = mock.live_objects()
    if stage == "eval":
        with dev.compile(mil_text("exc"), {}, 4, 4) as k, ane.Surface(4) as si, \
                ane.Surface(4) as so, k.request(si, so) as req:
            mock.raise_exception("eval")
            with pytest.raises(ane.AneError, match="NSInternalInconsistencyException.*evaluate"):
                k.eval(req)
            k.eval(req)
    else:
        mock.raise_exception(stage)
        with pytest.raises(ane.AneError, match=rf"ane_compile: Objective-C exception "
                                               rf"NSInternalInconsistencyException.*{stage}"):
            dev.compile(mil_text("exc"), {}, 4, 4)
    assert mock.live_objects() == base and mock.loaded_models() == 0
    assert mock.live_surfaces() == 0


def test_compile_limit(dev, mock):
    mock.set_compile_limit(5)
    kernels = [dev.compile(mil_text(f"lim{i}"), {}, 4, 4) for i in range(5)]
    with pytest.raises(ane.AneError, match=rf"{DOMAIN} \(11\): ANECCompile\(\) FAILED") as e:
        dev.compile(mil_text("lim5"), {}, 4, 4)
    # the rest of the NSError's userInfo follows, without repeating the description
    assert "compile budget spent" in str(e.value) and str(e.value).count("ANECCompile") == 1
    for k in kernels:
        k.free()
    with pytest.raises(ane.AneError, match="after 5 compiles"):  # unloading gives nothing back
        dev.compile(mil_text("lim6"), {}, 4, 4)
    assert dev.compile_count == 5


# ---- argument and bounds errors -------------------------------------------------------------


def test_surface_bounds(mock):
    with ane.Surface(16) as s, ane.Surface(8) as t:
        with pytest.raises(ane.AneError, match="outside the 16-byte surface"):
            s.write(b"x" * 17)
        with pytest.raises(ane.AneError, match="outside"):
            s.write(b"x" * 8, offset=10)
        with pytest.raises(ane.AneError, match="outside"):
            s.read(8, offset=12)
        with pytest.raises(ane.AneError):
            s.read(offset=17)
        with pytest.raises(ane.AneError, match="dst"):
            t.copy_from(s)  # 16 bytes into 8
        with pytest.raises(ane.AneError, match="src"):
            s.copy_from(t, 4, src_offset=6)
        s.write(b"", offset=16)  # empty write at the end is fine
    with pytest.raises(ane.AneError, match="size must be > 0"):
        ane.Surface(0)
    assert mock.locked_surfaces() == 0


def test_request_size_mismatch_and_wrong_kernel(dev):
    with dev.compile(mil_text("a"), {}, 8, 4) as ka, dev.compile(mil_text("b"), {}, 8, 4) as kb, \
            ane.Surface(8) as s8, ane.Surface(4) as s4:
        with pytest.raises(ane.AneError, match=r"surfaces are 4 -> 8 bytes.*is 8 -> 4 bytes"):
            ka.request(s4, s8)
        with pytest.raises(ane.AneError, match="surfaces are 8 -> 8"):
            ka.request(s8, s8)
        with ka.request(s8, s4) as req:
            with pytest.raises(ane.AneError, match="another kernel"):
                kb.eval(req)


def test_bad_weight_names_and_sizes(dev):
    for name in ["weights/w.bin", "@model_path/", "@model_path/../x.bin",
                 "@model_path/weights//w.bin", "@model_path/weights/../../etc/x"]:
        with pytest.raises(ane.AneError, match="is not"):
            dev.compile(mil_text("names"), {name: b"1"}, 4, 4)
    with pytest.raises(ane.AneError, match="in_bytes and out_bytes"):
        dev.compile(mil_text("sizes"), {}, 0, 4)
    with pytest.raises(ane.AneError, match="empty MIL"):
        dev.compile("", {}, 4, 4)


def test_use_after_free(dev):
    k = dev.compile(mil_text("uaf"), {}, 4, 4)
    s = ane.Surface(4)
    k.free()
    s.free()
    with pytest.raises(ane.AneError, match="Executable is freed"):
        k.request(ane.Surface(4), ane.Surface(4))
    with pytest.raises(ane.AneError, match="Surface is freed"):
        s.read()
    dev.close()
    with pytest.raises(ane.AneError, match="closed"):
        dev.compile(mil_text("closed"), {}, 4, 4)


def test_kernel_outlives_closed_device(mock):
    dev = ane.AneDevice(str(MOCK_SO))
    k = dev.compile(mil_text("outlive"), {}, 4, 4)
    dev.close()
    with ane.Surface(4) as si, ane.Surface(4) as so, k.request(si, so) as req:
        k.eval(req)
    k.free()
    assert mock.loaded_models() == 0


# ---- leaks and threads ----------------------------------------------------------------------


def cycle(dev, tag: str, n: int, out: list) -> None:
    x = np.arange(32, dtype=np.float16)
    bias = np.full(32, 0.5, np.float16)
    for i in range(n):
        with dev.compile(mil_text(f"{tag}{i}"), {W_KEY: bias.tobytes()}, 64, 64) as k, \
                ane.Surface(64) as si, ane.Surface(64) as so, k.request(si, so) as req:
            si.write(x)
            k.eval(req)
            out.append(bool(np.array_equal(so.read_array(np.float16), x * 2 + bias)))
            tmp = k.tmp_dir
        out.append(not os.path.exists(tmp))


def test_200_cycles_leave_nothing_alive(dev, mock):
    mock.set_eval_callback(scale_bias)
    base = mock.live_objects()
    ok: list[bool] = []
    cycle(dev, "leak", 200, ok)
    assert all(ok) and len(ok) == 400
    assert dev.compile_count == 200
    assert mock.live_objects() == base == 0
    assert mock.loaded_models() == 0
    assert mock.live_surfaces() == 0 and mock.locked_surfaces() == 0


def test_two_python_threads(dev, mock):
    mock.set_eval_callback(scale_bias)
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(t):
        try:
            cycle(dev, f"thread{t}_", 25, results[t])
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert all(results[0]) and all(results[1]) and len(results[0]) == len(results[1]) == 50
    assert dev.compile_count == 50
    assert mock.live_objects() == 0 and mock.live_surfaces() == 0 and mock.loaded_models() == 0


# ---- the Apple-dialect lint -----------------------------------------------------------------


def _objc_flags() -> list[str]:
    words = subprocess.check_output(["gnustep-config", "--objc-flags"], text=True).split()
    words = [w for w in words if w not in ("-MMD", "-MP", "-I.")]
    return ["-isystem" + w[2:] if w.startswith("-I/") else w for w in words]


@pytest.mark.skipif(shutil.which("clang") is None or shutil.which("gnustep-config") is None,
                    reason="clang and gnustep-config are needed for the Apple-dialect lint")
def test_apple_dialect_lint_is_clean():
    gcc_inc = subprocess.check_output(["gcc", "-print-file-name=include"], text=True).strip()
    runtime = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "ane").glob("*.m"))
    assert "csrc/ane/ane_runtime.m" in runtime and "csrc/ane/ane_errors.m" in runtime
    cmd = (["clang", "-fobjc-runtime=macosx-13.0", "-fsyntax-only", "-Wall", "-Wextra",
            "-Wno-unused-parameter"] + _objc_flags() +
           ["-std=gnu11", "-Icsrc/ane", "-Icsrc/compat/linux", "-idirafter", gcc_inc,
            *runtime, "csrc/compat/linux/iosurface_stub.m", "tests/mock/ane_mock.m"])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # and the dialect guard fires under ARC
    r = subprocess.run(cmd + ["-fobjc-arc"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "manual retain/release" in r.stderr


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("gnustep-config") is None,
                    reason="gcc and gnustep-config are needed to build a broken framework")
def test_missing_selector_is_named(tmp_path):
    # A framework whose _ANEInMemoryModel lacks -unloadWithQoS:error: (as if Apple renamed it);
    # opened in a fresh process, since class names are process-wide.
    src = tmp_path / "broken.m"
    src.write_text(
        "#import <Foundation/Foundation.h>\n#include <IOSurface/IOSurface.h>\n"
        "@interface _ANEInMemoryModelDescriptor : NSObject @end\n"
        "@implementation _ANEInMemoryModelDescriptor\n"
        "+ (id)modelWithMILText:(id)m weights:(id)w optionsPlist:(id)o { return nil; } @end\n"
        "@interface _ANEInMemoryModel : NSObject @end\n@implementation _ANEInMemoryModel\n"
        "+ (id)inMemoryModelWithDescriptor:(id)d { return nil; }\n"
        "- (id)hexStringIdentifier { return nil; }\n"
        "- (BOOL)compileWithQoS:(unsigned)q options:(id)o error:(id *)e { return NO; }\n"
        "- (BOOL)loadWithQoS:(unsigned)q options:(id)o error:(id *)e { return NO; }\n"
        "- (BOOL)evaluateWithQoS:(unsigned)q options:(id)o request:(id)r error:(id *)e "
        "{ return NO; }\n@end\n")
    so = tmp_path / "libbroken.so"
    subprocess.run(["gcc", *_objc_flags(), "-std=gnu11", "-Icsrc/compat/linux", "-shared", "-o",
                    str(so), str(src)], cwd=ROOT, check=True, capture_output=True)
    assert ("class _ANEInMemoryModel has no instance method -unloadWithQoS:error:"
            in open_in_fresh_process(str(so)))
