"""One test per ANE constraint rule (mil_reference.md §5) and per static-semantics rule (§1.5)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from anetrain.mil import MilError, MilWarning
from anetrain.mil.blob import write_blob
from anetrain.mil.builder import BUILD_INFO
from anetrain.mil.ir import format_literal
from anetrain.mil.sim import Simulation

HEAD = f"program(1.3)\n[buildInfo = {format_literal(BUILD_INFO)}]\n{{\n"
PERM = 'tensor<int32, [4]> pm = const()[name=string("pm"), val=tensor<int32, [4]>([0,1,3,2])];'
BF = 'bool bF = const()[name=string("bF"), val=bool(false)];'


def prog(body: str, params: str = "tensor<fp16, [1, 64, 1, 512]> x", out: str = "y") -> str:
    lines = "\n".join("        " + ln for ln in body.strip().split("\n"))
    return HEAD + f"    func main<ios18>({params}) {{\n{lines}\n    }} -> ({out});\n}}\n"


OK = prog(f'{PERM}\ntensor<fp16, [1, 64, 512, 1]> y = transpose(perm=pm, x=x)[name=string("y")];')


def sim(text: str, weights=None, **kw) -> Simulation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MilWarning)
        return Simulation(text, weights or {}, **kw)


def rejects(text: str, pattern: str, weights=None, **kw) -> None:
    with pytest.raises(MilError, match=pattern):
        sim(text, weights, **kw)


def test_valid_program_runs():
    x = np.arange(64 * 512, dtype=np.float32).reshape(1, 64, 1, 512) % 7
    assert np.array_equal(sim(OK)(x), x.transpose(0, 1, 3, 2).astype(np.float16))


def test_dim_limit_spatial():
    rejects(
        prog(
            f'{PERM}\ntensor<fp16, [1, 64, 16448, 1]> y = transpose(perm=pm, x=x)[name=string("y")];',  # noqa: E501
            "tensor<fp16, [1, 64, 1, 16448]> x",
        ),
        r"line 4: func main: input 'x' \[1, 64, 1, 16448\]: dim 3 = 16448 > 16384 \[dim-limit\]; "
        r"line 6: transpose 'y': .*dim 2 = 16448 > 16384 \[dim-limit\]",
    )


def test_dim_limit_on_the_packed_input():
    """Weight columns widen the one input past 16384 even when every slice of it is small
    (dim 2048, hidden 5632: ffnFused's input is [1, 2048, 1, 17152])."""
    body = (
        'tensor<int32, [4]> b = const()[name=string("b"), val=tensor<int32, [4]>([0,0,0,0])];\n'
        'tensor<int32, [4]> z = const()[name=string("z"), val=tensor<int32, [4]>([1,64,1,256])];\n'
        'tensor<fp16, [1, 64, 1, 256]> y = slice_by_size(x=x, begin=b, size=z)[name=string("y")];'
    )
    rejects(prog(body, "tensor<fp16, [1, 64, 1, 17152]> x"),
            r"func main: input 'x' \[1, 64, 1, 17152\]: dim 3 = 17152 > 16384")
    sim(prog(body, "tensor<fp16, [1, 64, 1, 16384]> x"))  # at the limit: fine


def test_dim_limit_names_line_and_op():
    body = (
        f'{PERM}\ntensor<int32, [4]> s = const()[name=string("s"), val=tensor<int32, [4]>([1,1,1,32768])];\n'  # noqa: E501
        'tensor<fp16, [1, 1, 1, 32768]> y = reshape(shape=s, x=x)[name=string("big")];'
    )
    rejects(prog(body), r"line 7: reshape 'big'.*32768 > 16384")


def test_rank_limit():
    body = (
        'tensor<int32, [6]> s = const()[name=string("s"), val=tensor<int32, [6]>([1,1,64,1,1,512])];\n'  # noqa: E501
        'tensor<fp16, [1, 1, 64, 1, 1, 512]> y = reshape(shape=s, x=x)[name=string("y")];'
    )
    rejects(prog(body), r"rank 6 > 5")


def test_conv_contraction_limit():
    c = 16448
    body = (
        f'tensor<fp16, [64, {c}, 1, 1]> w = const()[name=string("w"), val=tensor<fp16, [64, {c}, 1, 1]>'  # noqa: E501
        '(BLOBFILE(path=string("@model_path/weights/w.bin"), offset=uint64(64)))];\n'
        f'tensor<fp16, [1, 64, 1, 4]> y = conv(weight=w, x=x)[name=string("y")];'
    )
    w = {"@model_path/weights/w.bin": write_blob(np.zeros((64, c, 1, 1)))}
    rejects(prog(body, f"tensor<fp16, [1, {c}, 1, 4]> x"), r"conv contracts over 16448", w)


def test_single_input():
    rejects(
        prog(
            f'{PERM}\ntensor<fp16, [1, 64, 512, 1]> y = transpose(perm=pm, x=x)[name=string("y")];',
            "tensor<fp16, [1, 64, 1, 512]> x, tensor<fp16, [1, 64, 1, 512]> z",
        ),
        r"2 inputs",
    )


def test_single_output():
    body = f'{PERM}\ntensor<fp16, [1, 64, 512, 1]> y = transpose(perm=pm, x=x)[name=string("y")];'
    rejects(prog(body, out="y, x"), r"2 outputs")


def test_input_must_be_fp16_rank4():
    rejects(
        prog(
            f'{PERM}\ntensor<fp32, [1, 64, 512, 1]> y = transpose(perm=pm, x=x)[name=string("y")];',
            "tensor<fp32, [1, 64, 1, 512]> x",
        ),
        r"input 'x' is tensor<fp32",
    )


def test_output_must_be_fp16():
    body = (
        'string d = const()[name=string("d"), val=string("fp32")];\n'
        'tensor<fp32, [1, 64, 1, 512]> y = cast(dtype=d, x=x)[name=string("y")];'
    )
    rejects(prog(body), r"output 'y' is fp32")


def test_sdpa_with_mask_rejected():
    body = (
        "tensor<fp16, [1, 64, 1, 512]> y = scaled_dot_product_attention(attn_mask=x, key=x, "
        'query=x, value=x)[name=string("att")];'
    )
    rejects(
        prog(body), r"line 5: scaled_dot_product_attention 'att': attn_mask is silently ignored"
    )


def test_sdpa_without_mask_runs():
    body = (
        "tensor<fp16, [1, 64, 1, 512]> y = scaled_dot_product_attention(key=x, query=x, "
        'value=x)[name=string("att")];'
    )
    assert sim(prog(body))(np.ones((1, 64, 1, 512))).shape == (1, 64, 1, 512)


def test_conv_bias_rejected():
    body = (
        'tensor<fp16, [64, 64, 1, 1]> w = const()[name=string("w"), val=tensor<fp16, [64, 64, 1, 1]>'  # noqa: E501
        '(BLOBFILE(path=string("@model_path/weights/w.bin"), offset=uint64(64)))];\n'
        'tensor<fp16, [64]> b = const()[name=string("b"), val=tensor<fp16, [64]>'
        '(BLOBFILE(path=string("@model_path/weights/b.bin"), offset=uint64(64)))];\n'
        'tensor<fp16, [1, 64, 1, 512]> y = conv(bias=b, weight=w, x=x)[name=string("cv")];'
    )
    w = {"@model_path/weights/w.bin": write_blob(np.eye(64).reshape(64, 64, 1, 1)),
         "@model_path/weights/b.bin": write_blob(np.zeros(64))}  # fmt: skip
    rejects(prog(body), r"conv 'cv': conv\(bias=...\) is rejected", w)


@pytest.mark.parametrize("op, shape", [("conv", "[64, 64, 1, 1]"), ("linear", "[64, 64]")])
def test_runtime_weight_needs_matmul(op, shape):
    """conv and linear take only const weights on the ANE (upstream.md §9): one computed from the
    input is refused, the same weight as a BLOBFILE const is fine."""
    n = 64 * 64
    s = f'tensor<int32, [{shape.count(",") + 1}]> s = const()[name=string("s"), ' \
        f'val=tensor<int32, [{shape.count(",") + 1}]>({shape})];'  # fmt: skip
    x2 = ('tensor<int32, [3]> s2 = const()[name=string("s2"), '
          'val=tensor<int32, [3]>([1,64,64])];\n'
          'tensor<fp16, [1, 64, 64]> x2 = reshape(shape=s2, x=x)[name=string("x2")];\n')
    xin, yt = ("x", "[1, 64, 1, 64]") if op == "conv" else ("x2", "[1, 64, 64]")
    computed = (f"{s}\n{x2}tensor<fp16, {shape}> w = reshape(shape=s, x=x)[name=string(\"w\")];\n"
                f'tensor<fp16, {yt}> y = {op}(weight=w, x={xin})[name=string("op")];')
    params = "tensor<fp16, [1, 64, 1, 64]> x"
    rejects(prog(computed, params), rf"{op} 'op': {op} weight 'w' is computed, not a const")
    blob = (f'{x2}tensor<fp16, {shape}> w = const()[name=string("w"), val=tensor<fp16, {shape}>'
            '(BLOBFILE(path=string("@model_path/weights/w.bin"), offset=uint64(64)))];\n'
            f'tensor<fp16, {yt}> y = {op}(weight=w, x={xin})[name=string("op")];')
    w = {"@model_path/weights/w.bin": write_blob(np.arange(n).reshape(64, 64) % 3)}
    sim(prog(blob, params), w)


def test_inline_bool_rejected():
    body = (
        f'{PERM}\ntensor<fp16, [1, 64, 512, 1]> t = transpose(perm=pm, x=x)[name=string("t")];\n'
        "tensor<fp16, [1, 64, 512, 512]> y = matmul(transpose_x=bool(false), transpose_y=bool(false), "  # noqa: E501
        'x=t, y=x)[name=string("mm")];'
    )
    rejects(prog(body), r"matmul 'mm': inline bool transpose_x")


def test_concat_without_interleave_rejected():
    body = (
        'int32 ax = const()[name=string("ax"), val=int32(1)];\n'
        'tensor<fp16, [1, 128, 1, 512]> y = concat(axis=ax, values=(x, x))[name=string("cat")];'
    )
    rejects(prog(body), r"concat 'cat': concat without an explicit interleave")


def test_concat_interleave_semantics():
    body = (
        'int32 ax = const()[name=string("ax"), val=int32(1)];\nbool bT = const()[name=string("bT"), val=bool(true)];\n'  # noqa: E501
        'tensor<fp16, [1, 64, 1, 512]> z = mul(x=x, y=fp16(-1.0))[name=string("neg")];\n'
        'tensor<fp16, [1, 128, 1, 512]> y = concat(axis=ax, interleave=bT, values=(x, z))[name=string("cat")];'  # noqa: E501
    )
    x = np.arange(64, dtype=np.float32).reshape(1, 64, 1, 1) * np.ones((1, 1, 1, 512))
    y = sim(prog(body))(x)[0, :, 0, 0]
    assert list(y[:6]) == [0, -0.0, 1, -1, 2, -2]  # out[i::2] = values[i] (mil_reference.md §2.13)


def test_missing_blob_rejected():
    body = (
        'tensor<fp16, [1, 64, 1, 1]> w = const()[name=string("w"), val=tensor<fp16, [1, 64, 1, 1]>'
        '(BLOBFILE(path=string("@model_path/weights/w.bin"), offset=uint64(64)))];\n'
        'tensor<fp16, [1, 64, 1, 512]> y = mul(x=x, y=w)[name=string("y")];'
    )
    rejects(
        prog(body), r"line 5: const 'w': BLOBFILE '@model_path/weights/w.bin' is not in the weights"
    )
    rejects(
        prog(body),
        r"line 5: const 'w': .*metadata size 64 bytes, MIL type fp16\[1, 64, 1, 1\] needs 128",
        {"@model_path/weights/w.bin": write_blob(np.zeros(32))},
    )


def test_undefined_return_rejected():
    rejects(
        prog(
            f'{PERM}\ntensor<fp16, [1, 64, 512, 1]> y = transpose(perm=pm, x=x)[name=string("y")];',
            out="gone",
        ),
        r"returns undefined 'gone'",
    )


def test_declared_type_must_match_inferred():
    rejects(
        prog(
            f'{PERM}\ntensor<fp16, [1, 64, 1, 512]> y = transpose(perm=pm, x=x)[name=string("tp")];'
        ),
        r"line 6: transpose 'tp': declared tensor<fp16, \[1, 64, 1, 512\]>, inferred tensor<fp16, \[1, 64, 512, 1\]>",  # noqa: E501
    )


def test_ssa_redefinition_rejected():
    body = (
        f'{PERM}\ntensor<fp16, [1, 64, 512, 1]> y = transpose(perm=pm, x=x)[name=string("a")];\n'
        'tensor<fp16, [1, 64, 1, 512]> y = transpose(perm=pm, x=y)[name=string("b")];'
    )
    rejects(prog(body), r"'y' is already defined")


def test_mixed_dtypes_rejected():
    rejects(
        prog('tensor<fp16, [1, 64, 1, 512]> y = mul(x=x, y=fp32(2.0))[name=string("m")];'),
        r"mul 'm': x and y must have the same dtype",
    )


def test_two_functions_rejected():
    text = OK.replace(
        "    } -> (y);\n}",
        "    } -> (y);\n    func other<ios18>(tensor<fp16, [1, 64, 1, 512]> x) {\n    } -> (x);\n}",
    )
    rejects(text, r"expected one function 'main'")


def test_decompose_ops_warn_and_strict_rejects():
    body = 'tensor<fp16, [1, 64, 1, 512]> y = gelu(x=x)[name=string("g")];'
    with pytest.warns(MilWarning, match="gelu is reported to fail"):
        Simulation(prog(body), {})
    rejects(prog(body), r"gelu is reported to fail", strict=True)


def test_small_io_warns():
    with pytest.warns(MilWarning) as caught:
        Simulation(
            prog(
                f'{PERM}\ntensor<fp16, [1, 16, 64, 1]> y = transpose(perm=pm, x=x)[name=string("y")];',  # noqa: E501
                "tensor<fp16, [1, 16, 1, 64]> x",
            ),
            {},
        )
    got = sorted(str(w.message) for w in caught)
    assert got == ["line 4: func main: I/O tensor 'x' has 16 channels < 64 [io-min-channels]",
                   "line 4: func main: I/O tensor 'x' is 2048 bytes < 49152 [io-min-bytes]",
                   "line 4: func main: I/O tensor 'y' has 16 channels < 64 [io-min-channels]",
                   "line 4: func main: I/O tensor 'y' is 2048 bytes < 49152 [io-min-bytes]",
                   "line 4: func main: I/O tensor 'y' width 1 is not a multiple of 64 [io-width]",
                   "line 6: transpose 'y': 'y' [1, 16, 64, 1]: last axis of 2 bytes is padded to "
                   "64 (32x its size) [last-axis]"]


def test_small_last_axis_warns_and_strict_rejects():
    """Rule 20: every input, op output and BLOBFILE tensor keeps a last axis of >= 64 bytes
    (32 fp16); inline consts (shapes, perms) are parameters, not tensors, and never warn."""
    body = "\n".join([
        'tensor<int32, [4]> s2 = const()[name=string("s2"), val=tensor<int32, [4]>([1,64,256,2])];',
        'tensor<int32, [4]> s3 = const()[name=string("s3"), val=tensor<int32, [4]>([1,64,16,32])];',
        'tensor<fp16, [1, 64, 256, 2]> p = reshape(shape=s2, x=x)[name=string("p")];',
        'tensor<fp16, [1, 64, 16, 32]> q = reshape(shape=s3, x=x)[name=string("q")];',
        'tensor<fp16, [1, 1, 64, 16]> c = const()[name=string("c"), val=tensor<fp16, [1, 1, 64, '
        '16]>(BLOBFILE(path=string("@model_path/weights/c.bin"), offset=uint64(64)))];',
        'tensor<fp16, [1, 64, 1, 512]> y = add(x=x, y=x)[name=string("y")];'])  # fmt: skip
    w = {"@model_path/weights/c.bin": write_blob(np.zeros((1, 1, 64, 16)))}
    with pytest.warns(MilWarning) as caught:
        Simulation(prog(body), w)
    got = [str(m.message) for m in caught if "[last-axis]" in str(m.message)]
    assert got == [
        "line 7: reshape 'p': 'p' [1, 64, 256, 2]: last axis of 4 bytes is padded to 64 (16x its "
        "size) [last-axis]",
        "line 9: const 'c': 'c' [1, 1, 64, 16]: last axis of 32 bytes is padded to 64 (2x its "
        "size) [last-axis]"]  # fmt: skip
    rejects(prog(body), r"'p' \[1, 64, 256, 2\]: last axis of 4 bytes", w, strict=True)
    small_in = prog('tensor<fp16, [1, 64, 1, 16]> y = add(x=x, y=x)[name=string("y")];',
                    "tensor<fp16, [1, 64, 1, 16]> x")  # fmt: skip
    rejects(small_in, r"line 4: func main: input 'x' \[1, 64, 1, 16\]: last axis of 32 bytes "
            r"is padded to 64 \(2x its size\) \[last-axis\]", strict=True)  # fmt: skip


def test_blob_count_warns():
    lines, w = [], {}
    for i in range(16):
        p = f"@model_path/weights/c{i}.bin"
        lines.append(
            f'tensor<fp16, [1, 1, 1, 512]> c{i} = const()[name=string("c{i}"), val=tensor<fp16, [1, 1, 1, 512]>'  # noqa: E501
            f'(BLOBFILE(path=string("{p}"), offset=uint64(64)))];'
        )
        w[p] = write_blob(np.ones(512))
    lines.append('tensor<fp16, [1, 64, 1, 512]> y = mul(x=x, y=c15)[name=string("y")];')
    with pytest.warns(MilWarning, match="16 BLOBFILE constants > 15"):
        Simulation(prog("\n".join(lines)), w)
