"""Parser for coremlc-style MIL text (mil_reference.md §1.4 EBNF) and its type check (§1.5)."""

from __future__ import annotations

import re

import numpy as np

from anetrain.mil import ops
from anetrain.mil.errors import MilError
from anetrain.mil.ir import (
    NP_DTYPES,
    BlobRef,
    Function,
    Literal,
    MilType,
    OtherType,
    Program,
    Ref,
    Statement,
    TensorType,
)  # fmt: skip

_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\f\v]+|//[^\n]*)
      | (?P<nl>\n)
      | (?P<hex>[+-]?0[xX][0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?[pP][+-]?\d+)
      | (?P<arrow>->)
      | (?P<num>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
      | (?P<str>"(?:[^"\\\n]|\\.)*")
      | (?P<id>[A-Za-z_][A-Za-z0-9_@]*)
      | (?P<p>[()\[\]{}<>,=;?])""",
    re.X,
)
_TYPE_WORDS = {"tensor", "dict", "tuple", "list", "state"} | set(NP_DTYPES)
_INT_RANGE = {k: (np.iinfo(v).min, np.iinfo(v).max) for k, v in NP_DTYPES.items()
              if v is not None and np.issubdtype(v, np.integer)}  # fmt: skip
_SUBBYTE = {"int4": (-8, 7), "uint1": (0, 1), "uint2": (0, 3), "uint3": (0, 7), "uint4": (0, 15),
            "uint6": (0, 63)}  # fmt: skip
_INT_RANGE.update(_SUBBYTE)
MAX_ELEMENTS = 1 << 28  # refuse absurd literal/tensor sizes before allocating anything


def tokenize(text: str) -> list[tuple[str, str, int]]:
    toks, line, pos = [], 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise MilError(f"line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        if kind == "nl":
            line += 1
        elif kind != "ws":
            toks.append((kind, m.group(), line))
        pos = m.end()
    toks.append(("eof", "", line))
    return toks


class _Parser:
    def __init__(self, text: str):
        self.toks = tokenize(text)
        self.i = 0

    # -- token helpers -------------------------------------------------------

    def peek(self, k: int = 0) -> tuple[str, str, int]:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def err(self, msg: str) -> MilError:
        _, text, line = self.peek()
        return MilError(f"line {line}: {msg} (at {text!r})" if text else f"line {line}: {msg}")

    def next(self) -> tuple[str, str, int]:
        t = self.peek()
        self.i += 1
        return t

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] in ("p", "arrow", "id"):
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            raise self.err(f"expected {text!r}")

    def ident(self) -> str:
        kind, text, _ = self.peek()
        if kind != "id":
            raise self.err("expected an identifier")
        self.i += 1
        return text

    def intval(self) -> int:
        kind, text, _ = self.peek()
        if kind != "num" or not re.fullmatch(r"[+-]?\d+", text):
            raise self.err("expected an integer")
        self.i += 1
        return int(text)

    # -- program structure ---------------------------------------------------

    def program(self) -> Program:
        if self.ident() != "program":
            raise MilError("line 1: a MIL program starts with 'program('")
        self.expect("(")
        kind, ver, _ = self.next()
        if kind != "num" or not re.fullmatch(r"\d+\.\d+", ver):
            raise self.err("expected a version like 1.3")
        self.expect(")")
        attrs = self.attr_block() if self.peek()[1] == "[" else {}
        self.expect("{")
        funcs: dict[str, Function] = {}
        while not self.accept("}"):
            f = self.function()
            if f.name in funcs:
                raise MilError(f"line {f.line}: function {f.name!r} defined twice")
            funcs[f.name] = f
        if self.peek()[0] != "eof":
            raise self.err("text after the end of the program")
        if not funcs:
            raise MilError("program has no function")
        return Program(ver, funcs, attrs)

    def function(self) -> Function:
        line = self.peek()[2]
        if self.ident() != "func":
            self.i -= 1
            raise self.err("expected 'func'")
        name = self.ident()
        self.expect("<")
        opset = self.ident()
        self.expect(">")
        self.expect("(")
        params: list[tuple[MilType, str]] = []
        if not self.accept(")"):
            while True:
                params.append((self.type(), self.ident()))
                if self.accept(")"):
                    break
                self.expect(",")
        attrs = self.attr_block() if self.peek()[1] == "[" else {}
        self.expect("{")
        stmts = []
        while not self.accept("}"):
            stmts.append(self.statement())
        self.expect("->")
        self.expect("(")
        outs: list[str] = []
        if not self.accept(")"):
            while True:
                outs.append(self.ident())
                if self.accept(")"):
                    break
                self.expect(",")
        self.expect(";")
        return Function(name, opset, params, stmts, outs, attrs, line)

    def statement(self) -> Statement:
        line = self.peek()[2]
        results = []
        if self.accept("("):
            while True:
                results.append((self.type(), self.ident()))
                if self.accept(")"):
                    break
                self.expect(",")
        else:
            results.append((self.type(), self.ident()))
            while self.accept(","):
                results.append((self.type(), self.ident()))
        self.expect("=")
        op = self.ident()
        self.expect("(")
        args: dict[str, object] = {}
        if not self.accept(")"):
            while True:
                k = self.ident()
                if k in args:
                    raise self.err(f"argument {k!r} given twice")
                self.expect("=")
                args[k] = self.binding()
                if self.accept(")"):
                    break
                self.expect(",")
        attrs = self.attr_block() if self.peek()[1] == "[" else {}
        self.expect(";")
        return Statement(op, results, args, attrs, line)  # type: ignore[arg-type]

    def binding(self):
        if self.accept("("):
            items = [self.binding()]
            while not self.accept(")"):
                self.expect(",")
                items.append(self.binding())
            return tuple(items)
        if self.is_value():
            return self.value()
        return Ref(self.ident())

    def is_value(self) -> bool:
        kind, text, _ = self.peek()
        return kind == "id" and text in _TYPE_WORDS and self.peek(1)[1] in ("<", "(")

    def attr_block(self) -> dict[str, Literal]:
        self.expect("[")
        out: dict[str, Literal] = {}
        while True:
            k = self.ident()
            if k in out:
                raise self.err(f"attribute {k!r} given twice")
            self.expect("=")
            out[k] = self.value()
            if self.accept("]"):
                return out
            self.expect(",")

    # -- types and values ----------------------------------------------------

    def type(self) -> MilType:
        w = self.ident()
        if w == "tensor":
            self.expect("<")
            dt = self.ident()
            if dt not in NP_DTYPES:
                raise self.err(f"unknown dtype {dt!r}")
            self.expect(",")
            self.expect("[")
            dims: list[int] = []
            if not self.accept("]"):
                while True:
                    if self.peek()[1] == "?" or self.peek()[0] == "id":
                        raise self.err("dynamic dimensions are not supported on the ANE")
                    d = self.intval()
                    if d < 0:
                        raise self.err("negative dimension")
                    dims.append(d)
                    if self.accept("]"):
                        break
                    self.expect(",")
            self.expect(">")
            if int(np.prod(dims, dtype=np.float64)) > MAX_ELEMENTS:
                raise self.err(f"tensor of {dims} is too large")
            return TensorType(dt, tuple(dims))
        if w in NP_DTYPES:
            return TensorType(w, (), bare=True)
        if w in ("dict", "tuple", "list", "state"):
            self.expect("<")
            ps: list = []
            if not self.accept(">"):
                while True:
                    ps.append(self.intval() if w == "list" and ps else self.type())
                    if self.accept(">"):
                        break
                    self.expect(",")
            if (w == "dict" and len(ps) != 2) or (w == "state" and len(ps) != 1) or (
                    w == "list" and len(ps) != 2):  # fmt: skip
                raise self.err(f"malformed {w} type")
            return OtherType(w, tuple(ps))
        self.i -= 1
        raise self.err("expected a type")

    def value(self) -> Literal:
        t = self.type()
        self.expect("(")
        if isinstance(t, OtherType):
            v = self.other_payload(t)
        elif self.peek()[1] == "BLOBFILE":
            v = self.blobfile(t)
        elif self.peek()[1] == "[":
            flat: list = []
            self.array(flat)
            if len(flat) != t.size:
                raise self.err(f"{len(flat)} elements for {t}")
            v = self.convert(flat, t)
        else:
            if t.shape:
                raise self.err(f"a bare scalar cannot initialise {t}")
            v = self.convert([self.scalar_tok()], t)
        self.expect(")")
        return Literal(t, v)

    def scalar_tok(self) -> tuple[str, str]:
        kind, text, _ = self.peek()
        if kind in ("num", "hex", "str") or (kind == "id" and text in ("true", "false")):
            self.i += 1
            return kind, text
        raise self.err("expected a literal")

    def array(self, flat: list) -> None:
        self.expect("[")
        if self.accept("]"):
            return
        while True:
            if self.peek()[1] == "[":
                self.array(flat)
            else:
                flat.append(self.scalar_tok())
            if len(flat) > MAX_ELEMENTS:
                raise self.err("literal too large")
            if self.accept("]"):
                return
            self.expect(",")

    def convert(self, toks: list[tuple[str, str]], t: TensorType):
        dt = t.dtype
        if dt == "string":
            kind, text = toks[0]
            if kind != "str" or t.shape:
                raise self.err("expected a string literal")
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        vals = []
        for kind, text in toks:
            if dt == "bool":
                if text not in ("true", "false"):
                    raise self.err(f"expected true/false for {t}")
                vals.append(text == "true")
            elif dt in ("fp16", "fp32", "fp64"):
                if kind not in ("num", "hex"):
                    raise self.err(f"expected a number for {t}")
                x = float.fromhex(text) if kind == "hex" else float(text)
                with np.errstate(over="ignore"):
                    y = np.asarray(x, dtype=NP_DTYPES[dt])
                if not np.isfinite(y):
                    raise self.err(f"{text} is out of range for {dt}")
                vals.append(y)
            else:
                if kind != "num" or not re.fullmatch(r"[+-]?\d+", text):
                    raise self.err(f"expected an integer for {t}")
                lo, hi = _INT_RANGE[dt]
                if not lo <= int(text) <= hi:
                    raise self.err(f"{text} is out of range for {dt}")
                vals.append(int(text))
        return np.asarray(vals, dtype=NP_DTYPES[dt]).reshape(t.shape)

    def blobfile(self, t: TensorType) -> BlobRef:
        self.expect("BLOBFILE")
        self.expect("(")
        if self.ident() != "path":
            self.i -= 1
            raise self.err("expected path=")
        self.expect("=")
        p = self.value()
        self.expect(",")
        if self.ident() != "offset":
            self.i -= 1
            raise self.err("expected offset=")
        self.expect("=")
        o = self.value()
        self.expect(")")
        if not isinstance(p.value, str):
            raise self.err("BLOBFILE path must be a string")
        if (
            not isinstance(o.type, TensorType)
            or o.type.dtype not in ("uint64", "int64", "int32")
            or o.type.shape
            or int(o.value) < 0
        ):  # type: ignore[call-overload]
            raise self.err("BLOBFILE offset must be a non-negative uint64")
        return BlobRef(p.value, int(o.value))  # type: ignore[call-overload]

    def other_payload(self, t: OtherType):
        if t.kind == "dict":
            self.expect("{")
            pairs = []
            if not self.accept("}"):
                while True:
                    self.expect("{")
                    k = self.scalar_tok()
                    self.expect(",")
                    v = self.scalar_tok()
                    self.expect("}")
                    if k[0] != "str" or v[0] != "str":
                        raise self.err("only string dictionaries are supported")
                    pairs.append((k[1][1:-1], v[1][1:-1]))
                    if self.accept("}"):
                        break
                    self.expect(",")
            return tuple(pairs)
        items = []
        if self.peek()[1] != ")":
            items.append(self.value())
            while self.accept(","):
                items.append(self.value())
        return tuple(items)


# ----------------------------------------------------------------------------
# static semantics


def check_types(prog: Program) -> None:
    """SSA, declared = inferred types, const rules, defined outputs (mil_reference.md §1.5)."""
    for f in prog.functions.values():
        env: dict[str, MilType] = {}
        consts: dict[str, object] = {}
        for t, n in f.params:
            if n in env:
                raise MilError(f"line {f.line}: parameter {n!r} declared twice")
            env[n] = t
        for s in f.stmts:
            where = s.where()
            for _, n in s.results:
                if n in env:
                    raise MilError(f"{where}: {n!r} is already defined (SSA)")
            if s.op == "const":
                val = s.attrs.get("val")
                if s.args or val is None or len(s.results) != 1:
                    raise MilError(
                        f"{where}: const needs no arguments, one result and a val attribute"
                    )
                if val.type != s.results[0][0]:
                    raise MilError(f"{where}: declared {s.results[0][0]}, val is {val.type}")
                if not isinstance(val.value, BlobRef):
                    consts[s.results[0][1]] = val.value
                env[s.results[0][1]] = val.type
                continue
            types: dict[str, object] = {}
            cvals: dict[str, object] = {}
            for k, b in s.args.items():
                if isinstance(b, tuple):
                    types[k] = [_btype(e, env, where) for e in b]
                    continue
                types[k] = _btype(b, env, where)
                if isinstance(b, Ref) and b.name in consts:
                    cvals[k] = consts[b.name]
                elif isinstance(b, Literal) and not isinstance(b.value, BlobRef):
                    cvals[k] = b.value
            if len(s.results) != 1:
                raise MilError(f"{where}: multi-output ops are not supported")
            try:
                t = ops.infer(s.op, types, cvals)
            except MilError as e:
                raise MilError(f"{where}: {e}") from None
            if s.results[0][0] != t:
                raise MilError(f"{where}: declared {s.results[0][0]}, inferred {t}")
            env[s.results[0][1]] = t
        for o in f.outputs:
            if o not in env:
                raise MilError(f"line {f.line}: function {f.name!r} returns undefined {o!r}")


def _btype(b, env: dict[str, MilType], where: str):
    if isinstance(b, Ref):
        if b.name not in env:
            raise MilError(f"{where}: undefined variable {b.name!r}")
        return env[b.name]
    if isinstance(b, Literal):
        return b.type
    raise MilError(f"{where}: nested tuples are not supported")


def parse(text: str) -> Program:
    """Parse and type-check MIL text; raises MilError (with a line number) on anything wrong."""
    if not isinstance(text, str):
        raise MilError("MIL text must be a str")
    try:
        prog = _Parser(text).program()
    except RecursionError:
        raise MilError("MIL text nested too deeply") from None
    check_types(prog)
    return prog
