"""Every generated program rebuilt with coremltools' own iOS18 MIL op definitions: op names,
argument names, dtypes and the output shapes coremltools infers against the ones our text
declares, so a kernel Apple's compiler would reject for those reasons fails here first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mil_util import ANE_SHAPES

from anetrain.config import preset
from anetrain.mil.ir import NP_DTYPES, BlobRef, Literal, Program, Ref, TensorType
from anetrain.mil.kernels import KERNELS, build_specs
from anetrain.mil.parse import parse

ct = pytest.importorskip("coremltools")  # test-only dependency (.ci/run installs it)
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "tiny"


def _const_value(v: Literal) -> object:
    """A const's value as coremltools takes it; a BLOBFILE becomes zeros of its declared type
    (values never change an inferred type)."""
    t = v.type
    assert isinstance(t, TensorType), t
    if isinstance(v.value, BlobRef):
        return np.zeros(t.shape, NP_DTYPES[t.dtype])
    if t.dtype == "string":
        return v.value
    a = np.asarray(v.value, dtype=NP_DTYPES[t.dtype])
    return a if t.shape else a.reshape(()).dtype.type(a.reshape(()))  # a numpy scalar


def rebuild(prog: Program) -> list[str]:
    """Build `prog` op by op with coremltools (mb.<op>(same argument names, same consts));
    returns one line per result whose inferred dtype or shape differs from the declared one.
    An op or argument coremltools does not know raises (AttributeError, ValueError)."""
    f = prog.functions["main"]
    assert f.opset == "ios18" and len(f.params) == 1 and len(f.outputs) == 1
    t_in, name_in = f.params[0]
    assert isinstance(t_in, TensorType)
    dt = {"fp16": types.fp16, "fp32": types.fp32}[t_in.dtype]
    diffs: list[str] = []

    def resolve(b, env):
        if isinstance(b, Ref):
            return env[b.name]
        if isinstance(b, tuple):
            return [resolve(e, env) for e in b]
        return _const_value(b)

    @mb.program(input_specs=[mb.TensorSpec(shape=t_in.shape, dtype=dt)],
                opset_version=ct.target.iOS18)  # fmt: skip
    def program(x):
        env = {name_in: x}
        for s in f.stmts:
            assert len(s.results) == 1, s.where()
            t, name = s.results[0]
            if s.op == "const":
                v = mb.const(val=_const_value(s.attrs["val"]), name=name)
            else:
                op = getattr(mb, s.op)  # AttributeError: an op iOS18 does not define
                args = {k: resolve(b, env) for k, b in s.args.items()}
                v = op(**args, name=s.op_name)  # ValueError: an argument it does not know
            want = (t.dtype, tuple(t.shape))
            got = (types.builtin_to_string(v.dtype), tuple(int(d) for d in v.shape))
            if got != want:
                diffs.append(f"{s.where()}: declared {want}, coremltools infers {got}")
            env[name] = v
        return env[f.outputs[0]]

    assert program.functions["main"].opset_version == ct.target.iOS18
    return diffs


def _programs() -> dict[str, str]:
    out = {f"golden/{n}": (GOLDEN / f"{n}.mil").read_text() for n in KERNELS}
    for shape, cfg in ANE_SHAPES.items():
        out |= {f"{shape}/{n}": s.mil for n, s in build_specs(cfg.replace(n_layers=1)).items()}
    out |= {f"gqa-tiny/{n}": s.mil for n, s in
            build_specs(preset("tiny", n_kv_heads=2, head_size=24)).items()}  # fmt: skip
    return out


PROGRAMS = _programs()


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_coremltools_infers_the_declared_types(name):
    assert rebuild(parse(PROGRAMS[name])) == []


def test_a_wrong_declared_shape_or_unknown_argument_fails():
    """The comparison can fail: a declared shape that is not what the op computes, an argument
    name iOS18 does not have, an op it does not define (our parser refuses all three itself, so
    the parsed graph is edited)."""

    def edited(change) -> Program:
        prog = parse(PROGRAMS["golden/woFwd"])
        (s,) = [s for s in prog.functions["main"].stmts if s.op_name == "y_mm"]
        change(s)
        return prog

    def shape(s):
        s.results[0] = (TensorType("fp16", (1, 1, 64, 63)), s.results[0][1])

    assert rebuild(edited(shape)) == ["line 16: matmul 'y_mm': declared ('fp16', (1, 1, 64, 63)), "
                                      "coremltools infers ('fp16', (1, 1, 64, 64))"]  # fmt: skip
    with pytest.raises(ValueError, match="Unknown input 'interleave' for op 'matmul'"):
        rebuild(edited(lambda s: s.args.update(interleave=Ref("bF0"))))
    with pytest.raises(AttributeError, match="frobnicate"):
        rebuild(edited(lambda s: setattr(s, "op", "frobnicate")))
