"""Typed MIL builder: one `main`, one fp16 input, one output, shapes checked as ops are added."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from anetrain.mil import ops
from anetrain.mil.errors import MilError
from anetrain.mil.ir import (
    BlobRef,
    Function,
    Literal,
    OtherType,
    Program,
    Ref,
    Statement,
    TensorType,
    lit,
    scalar,
)  # fmt: skip

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# buildInfo of maderix's kernels (upstream.md §4.1), known to compile on M1-M5
BUILD_INFO = Literal(
    OtherType("dict", (scalar("string"), scalar("string"))),
    (("coremlc-component-MIL", "3510.2.1"), ("coremlc-version", "3505.4.1"),
     ("coremltools-component-milinternal", ""), ("coremltools-version", "9.0")),
)  # fmt: skip


@dataclass(frozen=True)
class Var:
    """A value in the program under construction."""

    name: str
    type: TensorType

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype


class Builder:
    """Builds `program(1.3)` / `func main<ios18>` text the way upstream's kernels are written.

    Every non-tensor parameter becomes a named `const` (deduplicated), never an inline literal
    (Orion: inline matmul flags are rejected, mil_reference.md §5 #10); every op carries
    `[name=string("…")]`; concat always gets an explicit `interleave`.
    """

    def __init__(self, float_dtype: str = "fp16"):
        self.fdt = float_dtype
        self.stmts: list[Statement] = []
        self.params: list[tuple[TensorType, str]] = []
        self.names: set[str] = set()
        self.consts: dict[str, Var] = {}  # formatted literal -> const var (dedup)
        self.values: dict[str, object] = {}  # const var name -> value (for shape inference)

    # -- names ---------------------------------------------------------------

    def _fresh(self, name: str) -> str:
        if not _IDENT.match(name):
            raise MilError(f"builder: {name!r} is not a MIL identifier")
        if name in self.names:
            raise MilError(f"builder: name {name!r} used twice")
        self.names.add(name)
        return name

    def _auto(self, hint: str) -> str:
        i = 0
        while f"{hint}{i}" in self.names:
            i += 1
        return self._fresh(f"{hint}{i}")

    # -- values --------------------------------------------------------------

    def input(self, name: str, shape: tuple[int, ...], dtype: str = "fp16") -> Var:
        if self.params:
            raise MilError("builder: a kernel has exactly one input (upstream.md §1.9)")
        t = TensorType(dtype, tuple(shape))
        self.params.append((t, self._fresh(name)))
        return Var(name, t)

    def const(self, value: Literal, name: str | None = None, hint: str = "c") -> Var:
        from anetrain.mil.ir import format_literal

        key = hint + "=" + format_literal(value)  # dedup per role, so a perm is never a shape
        if name is None and key in self.consts:
            return self.consts[key]
        nm = self._fresh(name) if name else self._auto(hint)
        self.stmts.append(Statement("const", [(value.type, nm)], {},
                                    {"name": lit("string", nm), "val": value}))  # fmt: skip
        v = Var(nm, value.type)  # type: ignore[arg-type]
        self.consts.setdefault(key, v)
        if not isinstance(value.value, BlobRef):
            self.values[nm] = value.value
        return v

    def blob(self, name: str, shape: tuple[int, ...], path: str, offset: int = 64) -> Var:
        """A BLOBFILE constant (one file per tensor, metadata at 64: mil_reference.md §4.4)."""
        t = TensorType(self.fdt, tuple(shape))
        return self.const(Literal(t, BlobRef(path, offset)), name=name)

    def _auto_const(self, k: str, v) -> Var:
        if isinstance(v, (bool, np.bool_)):
            return self.const(lit("bool", bool(v)), hint="b" + ("T" if v else "F"))
        if isinstance(v, (int, np.integer)):
            return self.const(lit("int32", int(v)), hint=k)
        if isinstance(v, float):
            return self.const(lit(self.fdt, v), hint=k)
        if isinstance(v, str):
            return self.const(lit("string", v), hint=k)
        if isinstance(v, (list, tuple)) and all(isinstance(e, (int, np.integer)) for e in v):
            return self.const(lit("int32", list(v), shape=(len(v),), bare=False), hint=k)
        raise MilError(f"builder: cannot make a constant for argument {k}={v!r}")

    # -- ops -----------------------------------------------------------------

    def op(self, op: str, name: str, *, op_name: str | None = None, **args) -> Var:
        """Append `name = op(args)`; python values become named consts; returns the typed result."""
        bind: dict[str, object] = {}
        types: dict[str, object] = {}
        consts: dict[str, object] = {}
        for k in sorted(args):  # coremlc prints arguments alphabetically (mil_reference.md §1.3)
            v = args[k]
            if isinstance(v, tuple) and v and all(isinstance(e, Var) for e in v):
                bind[k] = tuple(Ref(e.name) for e in v)
                types[k] = [e.type for e in v]
                continue
            if not isinstance(v, Var):
                v = self._auto_const(k, v)
            bind[k], types[k] = Ref(v.name), v.type
            if v.name in self.values:
                consts[k] = self.values[v.name]
        try:
            t = ops.infer(op, types, consts)
        except MilError as e:
            raise MilError(f"builder: {op} {name!r}: {e}") from None
        nm = self._fresh(name)
        self.stmts.append(Statement(op, [(t, nm)], bind, {"name": lit("string", op_name or nm)}))  # type: ignore[arg-type]
        return Var(nm, t)

    def name_op(self, v: Var, op_name: str) -> None:
        """Set the [name=...] of the op that produced `v` (a kernel's final op carries its name)."""
        for st in reversed(self.stmts):
            if any(nm == v.name for _, nm in st.results):
                st.attrs["name"] = lit("string", op_name)
                return
        raise MilError(f"builder: {v.name!r} is not the result of an op")

    # thin helpers for the ops the kernels use (argument spellings as upstream.md §4.3)
    def slice(self, name: str, x: Var, begin: list[int], size: list[int]) -> Var:
        return self.op("slice_by_size", name, x=x, begin=list(begin), size=list(size))

    def reshape(self, name: str, x: Var, shape: list[int]) -> Var:
        return self.op("reshape", name, x=x, shape=list(shape))

    def transpose(self, name: str, x: Var, perm: list[int] = (0, 1, 3, 2)) -> Var:  # type: ignore[assignment]
        return self.op("transpose", name, x=x, perm=list(perm))

    def matmul(self, name: str, x: Var, y: Var, tx: bool = False, ty: bool = False, **kw) -> Var:
        return self.op("matmul", name, x=x, y=y, transpose_x=tx, transpose_y=ty, **kw)

    def concat(
        self, name: str, values: list[Var], axis: int, interleave: bool = False, **kw
    ) -> Var:
        return self.op("concat", name, values=tuple(values), axis=axis, interleave=interleave, **kw)

    # -- result --------------------------------------------------------------

    def program(self, output: Var) -> Program:
        if not self.params:
            raise MilError("builder: the program has no input")
        fn = Function("main", "ios18", list(self.params), list(self.stmts), [output.name])
        return Program("1.3", {"main": fn}, {"buildInfo": BUILD_INFO})
