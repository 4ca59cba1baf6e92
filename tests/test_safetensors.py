"""safetensors reader and writer against the safetensors package; atomic directory writes."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from anetrain.formats import files
from anetrain.formats.files import WriteError, atomic_write, atomic_write_dir
from anetrain.formats.safetensors import (
    SafetensorsError,
    read_header,
    read_into,
    to_bf16,
    write_safetensors,
)


@pytest.fixture(scope="module")
def torch():
    """torch and the safetensors package: the references (test-only dependencies)."""
    pytest.importorskip("safetensors")
    return pytest.importorskip("torch")


def _torch_dtype(torch, dtype: str):
    return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dtype]


def _arrays(rng) -> dict[str, np.ndarray]:
    return {
        "a.weight": rng.standard_normal((5, 7), dtype=np.float32),
        "b": rng.standard_normal(9, dtype=np.float32) * 100,
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def _write(path: Path, arrays: dict[str, np.ndarray], dtype: str) -> int:
    items = [(n, a.shape, a) for n, a in arrays.items()]
    return atomic_write(path, lambda f: write_safetensors(f, items, dtype, {"format": "pt"}), "t")


def _read(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with open(path, "rb") as f:
        for name, e in read_header(path).items():
            out[name] = np.empty(e.shape, dtype=np.float32)
            read_into(f, e, out[name])
    return out


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_what_we_write_the_package_reads_as_torch_rounds(tmp_path, rng, dtype, torch):
    from safetensors.torch import load_file

    arrays = _arrays(rng)
    size = _write(tmp_path / "m.safetensors", arrays, dtype)
    assert size == (tmp_path / "m.safetensors").stat().st_size
    (n,) = struct.unpack("<Q", (tmp_path / "m.safetensors").read_bytes()[:8])
    assert n % 8 == 0
    theirs = load_file(tmp_path / "m.safetensors")
    assert list(theirs) == list(arrays)
    for name, a in arrays.items():
        want = torch.from_numpy(a).to(_torch_dtype(torch, dtype))  # no zeros or NaNs: == is bitwise
        assert theirs[name].dtype == want.dtype and torch.equal(theirs[name], want), name


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_what_the_package_writes_we_read_exactly(tmp_path, rng, dtype, torch):
    from safetensors.torch import save_file

    kind = _torch_dtype(torch, dtype)
    arrays = {n: torch.from_numpy(a).to(kind) for n, a in _arrays(rng).items()}
    save_file(arrays, tmp_path / "m.safetensors", metadata={"format": "pt"})
    ours = _read(tmp_path / "m.safetensors")
    assert set(ours) == set(arrays)
    for name, t in arrays.items():
        np.testing.assert_array_equal(ours[name], t.float().numpy(), err_msg=name)


def test_bf16_rounding_equals_torch_on_ties_and_specials(rng, torch):
    # ties to even both ways, the largest finite value, subnormals, infinities, NaNs
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF, 0x00000001, 0x807FFFFF,
                     0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001],
                    dtype=np.uint32)  # fmt: skip
    x = np.concatenate([bits.view(np.float32), rng.standard_normal(10000, dtype=np.float32)])
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = to_bf16(x)
    finite = np.isfinite(x) | np.isinf(x)
    np.testing.assert_array_equal(got[finite], want[finite])
    nan = np.isnan(x)
    assert np.isnan((got[nan].astype(np.uint32) << 16).view(np.float32)).all()


def test_a_strided_view_is_written_in_c_order(tmp_path, rng):
    w = rng.standard_normal((8, 6), dtype=np.float32)
    view = w.reshape(2, 2, 2, 6).transpose(0, 2, 1, 3)  # not contiguous
    path = tmp_path / "v.safetensors"
    atomic_write(path, lambda f: write_safetensors(f, [("w", (8, 6), view)], "F32"), "t")
    np.testing.assert_array_equal(_read(path)["w"], np.ascontiguousarray(view).reshape(8, 6))


def _file(path: Path, header: dict, data: bytes = b"", raw: bytes | None = None) -> Path:
    h = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def test_every_broken_header_is_refused_with_one_line(tmp_path):
    t = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    cases = {
        "short": (None, b"", b"\x01\x02"),
        "json": (None, b"", b"{not json"),
        "list": ([], b"", None),
        "entry": ({"w": {"dtype": "F32"}}, b"", None),
        "dtype": ({"w": {**t, "dtype": "F64"}}, b"\0" * 8, None),
        "shape": ({"w": {**t, "shape": [-2]}}, b"\0" * 8, None),
        "offsets": ({"w": {**t, "data_offsets": [0]}}, b"\0" * 8, None),
        "span": ({"w": {**t, "data_offsets": [0, 4]}}, b"\0" * 4, None),
        "gap": ({"w": {**t, "data_offsets": [4, 12]}}, b"\0" * 12, None),
        "overlap": ({"w": t, "v": {**t, "data_offsets": [4, 12]}}, b"\0" * 12, None),
        "truncated": ({"w": t}, b"\0" * 7, None),
        "oversized": ({"w": t}, b"\0" * 9, None),
    }
    messages = {}
    for name, (header, data, raw) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        if name == "short":
            path.write_bytes(raw)
        else:
            _file(path, header, data, raw)
        with pytest.raises(SafetensorsError) as e:
            read_header(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, (name, msg)
        messages[name] = msg[len(str(path)) + 2:]
    assert messages["dtype"] == "tensor w has dtype F64 (supported: F32, BF16, F16)"
    assert messages["span"] == "tensor w spans 4 bytes; F32 [2] needs 8"
    assert messages["gap"] == "tensor w starts at byte 4 of the data, not 0 (a gap or an overlap)"
    n = len(json.dumps({"w": t}).encode())
    assert messages["truncated"] == f"truncated ({8 + n + 7} bytes, the header says {8 + n + 8})"
    assert messages["oversized"] == f"oversized ({8 + n + 9} bytes, the header says {8 + n + 8})"
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(SafetensorsError, match="not a safetensors file \\(header length"):
        read_header(huge)


# ----------------------------------------------------------------------------
# atomic_write_dir


def _fill(names: dict[str, bytes]):
    def fill(tmp: Path) -> list[str]:
        for n, data in names.items():
            atomic_write(tmp / n, lambda f, data=data: f.write(data), n)
        return sorted(names)
    return fill


def test_a_directory_is_replaced_whole(tmp_path):
    out = tmp_path / "model"
    assert atomic_write_dir(out, _fill({"a": b"1", "b": b"2"}), "model") == ["a", "b"]
    assert atomic_write_dir(out, _fill({"c": b"3"}), "model") == ["c"]
    assert sorted(p.name for p in out.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left


def test_a_failed_directory_write_leaves_the_old_one(tmp_path, monkeypatch):
    out = tmp_path / "model"
    atomic_write_dir(out, _fill({"a": b"old"}), "model")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(WriteError) as e:
        atomic_write_dir(out, _fill({"a": b"new", "b": b"new"}), "model directory")
    assert str(e.value).startswith(f"{out / 'a'}: cannot write a (No space left")
    monkeypatch.undo()

    def interrupted(tmp: Path) -> None:
        (tmp / "half").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(out, interrupted, "model directory")
    assert (out / "a").read_bytes() == b"old" and sorted(os.listdir(out)) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_rename_puts_the_old_directory_back(tmp_path, monkeypatch):
    out = tmp_path / "model"
    atomic_write_dir(out, _fill({"a": b"old"}), "model")
    real = os.replace

    def second_fails(src, dst):
        if Path(src).name.startswith(".model.tmp-"):
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", second_fails)
    with pytest.raises(WriteError, match=f"^{out}: cannot write model directory \\(Input/output"):
        atomic_write_dir(out, _fill({"a": b"new"}), "model directory")
    assert (out / "a").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_f16_goes_through_the_c_core_both_ways(tmp_path, rng, monkeypatch):
    """One fp16 conversion: F16 tensors are encoded and decoded by native's C core."""
    from anetrain import native

    calls = []
    for name in ("f32_to_f16", "f16_to_f32"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _f=real, _n=name, **k: calls.append(_n)
                            or _f(*a, **k))  # fmt: skip
    arrays = {"w": np.array([1.0, 65504.0, 2.0**-24, -0.0, np.inf, 1 + 2.0**-11], np.float32)}
    _write(tmp_path / "m.safetensors", arrays, "F16")
    assert "f32_to_f16" in calls
    want = arrays["w"].astype(np.float16).astype(np.float32)  # 1 + 2^-11 ties to even: 1
    np.testing.assert_array_equal(_read(tmp_path / "m.safetensors")["w"], want)
    assert "f16_to_f32" in calls
