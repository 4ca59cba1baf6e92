"""The probe suite's MIL programs: ladders of 1x1 convs with a constant weight (peak throughput)."""

from __future__ import annotations

import numpy as np

from anetrain import native
from anetrain.mil.blob import write_blob
from anetrain.mil.builder import Builder
from anetrain.mil.ir import format_program
from anetrain.mil.kernels import WEIGHT, KernelSpec, Layout, Segment


def ladder_flops(depth: int, channels: int, spatial: int) -> float:
    """FLOPs of one evaluation of conv_ladder(depth, channels, spatial)."""
    return 2.0 * depth * channels * channels * spatial


def conv_ladder(depth: int, channels: int, spatial: int, name: str = "") -> KernelSpec:
    """`depth` chained 1x1 convs [1, C, 1, S] -> [1, C, 1, S] (the reference trainer's peak table:
    "128x conv 512ch sp64"), all with one constant C x C weight.

    The weight is a permutation, so the values pass through unchanged however deep the ladder
    (the ANE's time does not depend on them). The final op carries `name` (default
    "conv{depth}x{C}sp{S}"), so programs of the same shape but different names are distinct
    programs to the framework (each its own compile, upstream.md §1.8).
    """
    name = name or f"conv{depth}x{channels}sp{spatial}"
    lay = Layout(channels, spatial, (Segment("x", 0, channels, 0, spatial),))
    b = Builder()
    x = b.input("x", lay.shape)  # [1, C, 1, S] fp16
    perm = np.roll(np.eye(channels, dtype=np.float32), 1, axis=0)  # [C_out, C_in]
    half = native.f32_to_f16(np.ascontiguousarray(perm.reshape(channels, channels, 1, 1)))
    path = WEIGHT.format("w")
    w = b.blob("w", (channels, channels, 1, 1), path)  # [C_out, C_in, 1, 1]
    y = x
    for i in range(depth):
        y = b.op("conv", f"c{i}", x=y, weight=w, strides=[1, 1], pad_type="valid",
                 pad=[0, 0, 0, 0], dilations=[1, 1], groups=1)  # fmt: skip
    b.name_op(y, f"{name}_out")
    prog = b.program(y)
    weights = {path: write_blob(half.view(np.float16))}
    return KernelSpec(name, format_program(prog), weights, lay, lay, prog)
