"""MIL program graph (types, literals, statements) and its printer (program(1.3)/ios18 dialect)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anetrain.mil.errors import MilError

# ----------------------------------------------------------------------------
# types

# MIL dtype name -> numpy storage dtype of literals (sub-byte types are held one per byte).
# Spellings from coremltools type_mapping (mil_reference.md §1.4 DTYPE).
NP_DTYPES: dict[str, type | None] = {
    "bool": np.bool_, "string": None, "fp16": np.float16, "fp32": np.float32, "fp64": np.float64,
    "int4": np.int8, "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint1": np.uint8, "uint2": np.uint8, "uint3": np.uint8, "uint4": np.uint8, "uint6": np.uint8,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
}  # fmt: skip
FLOAT_DTYPES = ("fp16", "fp32", "fp64")
ITEMSIZE = {d: np.dtype(t).itemsize for d, t in NP_DTYPES.items() if t is not None}  # bytes


@dataclass(frozen=True)
class TensorType:
    """tensor<dtype, shape>; a scalar is shape (). `bare` only chooses the spelling `int32` vs
    `tensor<int32, []>` (both dialects mean the same value, mil_reference.md §1.2)."""

    dtype: str
    shape: tuple[int, ...] = ()
    bare: bool = field(default=False, compare=False)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * ITEMSIZE.get(self.dtype, 1)

    def __str__(self) -> str:
        if self.bare and not self.shape:
            return self.dtype
        return f"tensor<{self.dtype}, [{', '.join(str(d) for d in self.shape)}]>"


def scalar(dtype: str) -> TensorType:
    return TensorType(dtype, (), bare=True)


@dataclass(frozen=True)
class OtherType:
    """dict<…>, tuple<…>, list<…>, state<…>: parsed and printed, never computed with."""

    kind: str
    params: tuple

    def __str__(self) -> str:
        return f"{self.kind}<{', '.join(str(p) for p in self.params)}>"


MilType = TensorType | OtherType

# ----------------------------------------------------------------------------
# values


@dataclass(frozen=True)
class BlobRef:
    """BLOBFILE(path, offset): offset of the 64-byte metadata record (mil_reference.md §4.1)."""

    path: str
    offset: int


@dataclass(eq=False)
class Literal:
    """A typed value: numpy array (numeric/bool), str, BlobRef, tuple of Literal, or dict pairs."""

    type: MilType
    value: object

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Literal) or self.type != other.type:
            return False
        a, b = self.value, other.value
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return (
                isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
            )  # fmt: skip
        return a == b

    __hash__ = None  # type: ignore[assignment]


def lit(
    dtype: str, value, shape: tuple[int, ...] | None = None, bare: bool | None = None
) -> Literal:
    """Literal from a python value: lit("int32", 1), lit("int32", [0, 0, 0, 64]), ...."""
    if dtype == "string":
        return Literal(scalar("string"), str(value))
    arr = np.asarray(value, dtype=NP_DTYPES[dtype])
    shp = arr.shape if shape is None else tuple(shape)
    if arr.size != int(np.prod(shp, dtype=np.int64)):
        raise MilError(f"literal: {arr.size} elements for shape {list(shp)}")
    return Literal(
        TensorType(dtype, shp, bare=(shp == ()) if bare is None else bare), arr.reshape(shp)
    )


@dataclass(frozen=True)
class Ref:
    """A binding to a named variable."""

    name: str


Binding = Ref | Literal | tuple  # tuple = parenthesised list of bindings (variadic inputs)

# ----------------------------------------------------------------------------
# graph


@dataclass(eq=False)
class Statement:
    """`results = op(args)[attrs];` — a const keeps its value in attrs["val"]."""

    op: str
    results: list[tuple[MilType, str]]
    args: dict[str, Binding]
    attrs: dict[str, Literal]
    line: int = 0

    @property
    def op_name(self) -> str:
        n = self.attrs.get("name")
        return n.value if n is not None and isinstance(n.value, str) else "?"

    def key(self) -> tuple:
        """Everything but the line number, for graph comparison."""
        return (
            self.op,
            [(str(t), n) for t, n in self.results],
            _bkey(self.args),
            _bkey(self.attrs),
        )

    def where(self) -> str:
        return f"line {self.line}: {self.op} {self.op_name!r}"


def _bkey(x):
    if isinstance(x, dict):
        return sorted((k, _bkey(v)) for k, v in x.items())
    if isinstance(x, tuple):
        return ("tuple", [_bkey(v) for v in x])
    if isinstance(x, Ref):
        return ("ref", x.name)
    if isinstance(x, Literal):
        return ("lit", format_literal(x))
    return repr(x)


@dataclass(eq=False)
class Function:
    name: str
    opset: str
    params: list[tuple[MilType, str]]
    stmts: list[Statement]
    outputs: list[str]
    attrs: dict[str, Literal] = field(default_factory=dict)
    line: int = 0


@dataclass(eq=False)
class Program:
    version: str
    functions: dict[str, Function]
    attrs: dict[str, Literal] = field(default_factory=dict)

    def key(self) -> tuple:
        """A comparable description of the whole graph (line numbers excluded)."""
        return (
            self.version, _bkey(self.attrs),
            [(f.name, f.opset, [(str(t), n) for t, n in f.params], [s.key() for s in f.stmts],
              f.outputs, _bkey(f.attrs)) for f in self.functions.values()],
        )  # fmt: skip


# ----------------------------------------------------------------------------
# printer


def format_float(v: float, dtype: str) -> str:
    """Exact value as a C99 hex float, as coremlc prints it (`0x1p-3`); mil_reference.md §3.6."""
    if np.isnan(v):
        raise MilError("literal: NaN cannot be written in MIL text")
    if np.isinf(v):
        raise MilError(f"literal: {v} cannot be written as {dtype}")
    h = float(v).hex()  # '-0x1.8000000000000p+1'
    mant, exp = h.split("p")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}p{exp}"


def _scalar_text(x, dtype: str) -> str:
    if dtype in FLOAT_DTYPES:
        return format_float(float(x), dtype)
    if dtype == "bool":
        return "true" if bool(x) else "false"
    return str(int(x))


def format_literal(v: Literal) -> str:
    t, x = v.type, v.value
    if isinstance(x, BlobRef):
        return f'{t}(BLOBFILE(path=string("{x.path}"), offset=uint64({x.offset})))'
    if isinstance(t, OtherType):
        if t.kind == "dict":
            pairs = ", ".join("{" + f"{_quote(k)}, {_quote(w)}" + "}" for k, w in x)
            return f"{t}({{{pairs}}})"
        return f"{t}({', '.join(format_literal(e) for e in x)})"
    if t.dtype == "string":
        return f"{t}({_quote(x)})"
    arr = np.asarray(x)
    if not t.shape:
        return f"{t}({_scalar_text(arr.reshape(()), t.dtype)})"
    # flat list regardless of rank, as maderix writes it (mil_reference.md §1.3)
    return f"{t}([{','.join(_scalar_text(e, t.dtype) for e in arr.reshape(-1))}])"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format_binding(b: Binding) -> str:
    if isinstance(b, Ref):
        return b.name
    if isinstance(b, Literal):
        return format_literal(b)
    return "(" + ", ".join(_format_binding(e) for e in b) + ")"


def format_statement(s: Statement) -> str:
    res = ", ".join(f"{t} {n}" for t, n in s.results)
    if len(s.results) > 1:
        res = f"({res})"
    args = ", ".join(f"{k}={_format_binding(b)}" for k, b in s.args.items())
    attrs = ", ".join(f"{k}={format_literal(v)}" for k, v in s.attrs.items())
    return f"{res} = {s.op}({args})" + (f"[{attrs}]" if attrs else "") + ";"


def format_program(p: Program) -> str:
    lines = [f"program({p.version})"]
    if p.attrs:
        lines.append(
            "[" + ", ".join(f"{k} = {format_literal(v)}" for k, v in p.attrs.items()) + "]"
        )
    lines.append("{")
    for f in p.functions.values():
        params = ", ".join(f"{t} {n}" for t, n in f.params)
        fattrs = ""
        if f.attrs:
            fattrs = "[" + ", ".join(f"{k}={format_literal(v)}" for k, v in f.attrs.items()) + "]"
        lines.append(f"    func {f.name}<{f.opset}>({params}){fattrs} {{")
        lines.extend("        " + format_statement(s) for s in f.stmts)
        lines.append(f"    }} -> ({', '.join(f.outputs)});")
    lines.append("}")
    return "\n".join(lines) + "\n"
