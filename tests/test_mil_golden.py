"""Golden MIL text for the tiny preset; parse -> print round trips of every generated program."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from anetrain.config import preset
from anetrain.mil.ir import format_program
from anetrain.mil.kernels import KERNELS, build_specs
from anetrain.mil.parse import parse

GOLDEN = Path(__file__).parent / "golden" / "tiny"
SPECS = build_specs(preset("tiny"))
# the ops and argument spellings upstream.md §4.3 records as compiling on the ANE (mil_dynamic.h)
PROVEN_OPS = {"const", "slice_by_size", "reshape", "transpose", "matmul", "mul", "add", "sub",
              "softmax", "reduce_sum", "sigmoid", "concat"}  # fmt: skip


@pytest.mark.parametrize("name", KERNELS)
def test_golden_text(name):
    want = (GOLDEN / f"{name}.mil").read_text()
    assert SPECS[name].mil == want, f"{name}: regenerate with `python scripts/gen_golden.py`"


def test_golden_weights():
    lines = (GOLDEN / "weights.txt").read_text().split("\n")
    got = [f"{n} {p} {len(d)} {hashlib.sha256(d).hexdigest()}"
           for n, s in SPECS.items() for p, d in sorted(s.weights.items())]  # fmt: skip
    assert got == [ln for ln in lines if ln]


@pytest.mark.parametrize("name", KERNELS)
def test_parse_round_trips_to_the_same_graph(name):
    text = SPECS[name].mil
    prog = parse(text)
    again = parse(format_program(prog))
    assert format_program(prog) == text
    assert prog.key() == again.key()
    assert prog.key() == SPECS[name].graph.key()  # the builder's graph, statement by statement


@pytest.mark.parametrize("name", KERNELS)
def test_dialect(name):
    text = SPECS[name].mil
    lines = text.split("\n")
    assert lines[0] == "program(1.3)"
    assert lines[1].startswith('[buildInfo = dict<string, string>({{"coremlc-component-MIL"')
    assert lines[3].startswith("    func main<ios18>(tensor<fp16, [1, ")
    body = [ln for ln in lines[4:] if ln.startswith("        ")]
    assert all('[name=string("' in ln for ln in body)
    ops = {re.search(r" = (\w+)\(", ln).group(1) for ln in body}
    assert ops <= PROVEN_OPS
    assert not re.search(r"(?<!bool\()\b(true|false)\b", text)  # no inline booleans
    for ln in body:
        if " = concat(" in ln:
            assert "interleave=" in ln
            assert re.search(r"values=\(\w+, ", ln), f"one-value concat: {ln.strip()}"
        if " = matmul(" in ln:
            assert re.search(r"transpose_x=\w+, transpose_y=\w+", ln)
    names = re.findall(r'name=string\("([^"]+)"\)', text)
    assert len(names) == len(set(names))
    assert f'name=string("{name}_out")' in text
    assert text.count("BLOBFILE") <= 15
