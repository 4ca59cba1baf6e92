"""Property tests: mutations of valid programs either parse (and run) or raise MilError."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anetrain.config import preset
from anetrain.mil import MilError
from anetrain.mil.kernels import build_specs
from anetrain.mil.sim import Simulation

SPECS = list(build_specs(preset("tiny", seq_len=64)).values())
TOKENS = ["(", ")", "[", "]", "{", "}", "<", ">", ",", "=", ";", "->", "?", "-1", "0", "1",
          "65536", "1e99", "0x1p-3", "0x1p+99", '"s"', "tensor", "fp16", "int32", "bool",
          "true", "false", "x", "BLOBFILE", "concat", "matmul", "uint64(64)", "@", "\\",
          "\n"]  # fmt: skip


@st.composite
def mutated(draw):
    spec = draw(st.sampled_from(SPECS))
    text = spec.mil
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "insert", "replace_num", "swap_lines", "dup_line"]))
        n = len(text)
        i = draw(st.integers(0, n - 1))
        if kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 12)) :]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif kind == "replace_num":
            digits = [k for k, c in enumerate(text) if c.isdigit()]
            k = digits[draw(st.integers(0, len(digits) - 1))]
            text = text[:k] + str(draw(st.integers(0, 70000))) + text[k + 1 :]
        else:
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if kind == "swap_lines":
                lines[a], lines[b] = lines[b], lines[a]
            else:
                lines.insert(a, lines[b])
            text = "\n".join(lines)
    return spec, text


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_parse_or_raise_milerror(case):
    spec, text = case
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sim = Simulation(text, spec.weights)
            x = np.ones(sim.input_type.shape, dtype=np.float16)
            sim(x)  # a program that type-checks must also run
    except MilError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_milerror(text):
    try:
        Simulation(text, {})
    except MilError:
        pass
