"""MIL op signatures and type/shape inference (mil_reference.md §2) for builder and parser."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from anetrain.mil.errors import MilError
from anetrain.mil.ir import TensorType

_MISSING = object()

# ----------------------------------------------------------------------------
# argument view handed to the inference functions


class Args:
    """Types of an op's tensor arguments and values of its constant ones."""

    def __init__(self, op: str, types: dict[str, object], consts: dict[str, object]):
        self.op, self.types, self.consts = op, types, consts

    def has(self, k: str) -> bool:
        return k in self.types

    def t(self, k: str) -> TensorType:
        t = self.types.get(k)
        if not isinstance(t, TensorType):
            raise MilError(f"argument {k!r} must be a single tensor")
        return t

    def ts(self, k: str) -> list[TensorType]:
        t = self.types.get(k)
        if not isinstance(t, list) or not t or not all(isinstance(e, TensorType) for e in t):
            raise MilError(f"argument {k!r} must be a parenthesised tuple of tensors")
        return t

    def c(self, k: str, default=_MISSING):
        """The constant value of argument k (numpy array, or str for strings)."""
        if k not in self.types:
            if default is _MISSING:
                raise MilError(f"missing argument {k!r}")
            return default
        if k not in self.consts:
            raise MilError(f"argument {k!r} must be a compile-time constant")
        return self.consts[k]

    def ints(self, k: str, default=_MISSING) -> list[int] | None:
        v = self.c(k, default)
        return None if v is None else [int(e) for e in np.asarray(v).reshape(-1)]

    def int(self, k: str, default=_MISSING) -> int:
        v = self.c(k, default)
        if np.asarray(v).size != 1:
            raise MilError(f"argument {k!r} must be a scalar")
        return int(np.asarray(v).reshape(()))

    def flag(self, k: str, default: bool = False) -> bool:
        return bool(np.asarray(self.c(k, default)).reshape(()))


@dataclass(frozen=True)
class OpSpec:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    consts: tuple[str, ...]  # arguments that must be compile-time constants
    infer: Callable[[Args], TensorType]


def _axis(a: int, rank: int, what: str = "axis") -> int:
    if not -rank <= a < rank:
        raise MilError(f"{what} {a} out of range for rank {rank}")
    return a % rank


def broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            raise MilError(f"shapes {list(a)} and {list(b)} do not broadcast")
        out.append(max(x, y) if 1 in (x, y) else x)
    return tuple(reversed(out))


def _float(t: TensorType, k: str = "x") -> None:
    if t.dtype not in ("fp16", "fp32"):
        raise MilError(f"{k} must be fp16 or fp32, got {t.dtype}")


def _same(ts: list[TensorType], names: str) -> str:
    if len({t.dtype for t in ts}) != 1:
        raise MilError(f"{names} must have the same dtype, got {', '.join(t.dtype for t in ts)}")
    return ts[0].dtype


# ----------------------------------------------------------------------------
# inference functions


def _binary(out_bool: bool):
    def f(a: Args) -> TensorType:
        x, y = a.t("x"), a.t("y")
        dt = _same([x, y], "x and y")
        if dt not in ("fp16", "fp32", "int32", "bool"):
            raise MilError(f"unsupported dtype {dt}")
        return TensorType("bool" if out_bool else dt, broadcast(x.shape, y.shape))

    return f


def _unary(a: Args) -> TensorType:
    x = a.t("x")
    _float(x)
    return TensorType(x.dtype, x.shape)


def _clip(a: Args) -> TensorType:
    x = _unary(a)
    if float(np.asarray(a.c("alpha"))) >= float(np.asarray(a.c("beta"))):
        raise MilError("clip needs alpha < beta")
    return x


def _cast(a: Args) -> TensorType:
    x, dt = a.t("x"), a.c("dtype")
    if dt not in ("fp16", "fp32", "int32", "bool", "int8", "uint8", "int16", "uint16"):
        raise MilError(f"cast to unsupported dtype {dt!r}")
    return TensorType(str(dt), x.shape)


def _softmax(a: Args) -> TensorType:
    x = _unary(a)
    _axis(a.int("axis", -1), x.rank)
    return x


def _matmul(a: Args) -> TensorType:
    x, y = a.t("x"), a.t("y")
    dt = _same([x, y], "x and y")
    if x.rank < 1 or y.rank < 1:
        raise MilError("matmul operands must have rank >= 1")
    xs, ys = list(x.shape), list(y.shape)
    if a.flag("transpose_x"):
        if x.rank < 2:
            raise MilError("transpose_x on a rank-1 operand")
        xs[-2], xs[-1] = xs[-1], xs[-2]
    if a.flag("transpose_y"):
        if y.rank < 2:
            raise MilError("transpose_y on a rank-1 operand")
        ys[-2], ys[-1] = ys[-1], ys[-2]
    xv, yv = (xs if len(xs) > 1 else [1] + xs), (ys if len(ys) > 1 else ys + [1])
    if xv[-1] != yv[-2]:
        raise MilError(f"matmul inner dimensions differ: x {xs} · y {ys}")
    out = list(broadcast(tuple(xv[:-2]), tuple(yv[:-2]))) + [xv[-2], yv[-1]]
    if len(xs) == 1:
        out.pop(-2)
    if len(ys) == 1:
        out.pop(-1)
    return TensorType(dt, tuple(out))


def _linear(a: Args) -> TensorType:
    x, w = a.t("x"), a.t("weight")
    if not 1 <= x.rank <= 3 or w.rank != 2 or w.shape[1] != x.shape[-1]:
        raise MilError(f"linear: x {list(x.shape)} and weight {list(w.shape)} do not fit")
    if a.has("bias") and a.t("bias").shape != (w.shape[0],):
        raise MilError(f"linear: bias must be [{w.shape[0]}]")
    return TensorType(x.dtype, x.shape[:-1] + (w.shape[0],))


def _conv(a: Args) -> TensorType:
    x, w = a.t("x"), a.t("weight")
    n = x.rank - 2
    if not 1 <= n <= 3 or w.rank != x.rank:
        raise MilError(f"conv: x {list(x.shape)} / weight {list(w.shape)} ranks do not fit")
    g = a.int("groups", 1)
    if g < 1 or x.shape[1] % g or w.shape[1] != x.shape[1] // g or w.shape[0] % g:
        raise MilError(f"conv: weight {list(w.shape)} does not fit C_in {x.shape[1]} / groups {g}")
    strides = a.ints("strides", [1] * n)
    dil = a.ints("dilations", [1] * n)
    pad_type = a.c("pad_type", "valid")
    pad = a.ints("pad", [0] * (2 * n)) if pad_type == "custom" else [0] * (2 * n)
    if len(strides) != n or len(dil) != n or len(pad) != 2 * n:
        raise MilError("conv: strides/dilations/pad have the wrong length")
    out = [x.shape[0], w.shape[0]]
    for i in range(n):
        k = (w.shape[2 + i] - 1) * dil[i] + 1
        d = x.shape[2 + i]
        if pad_type in ("valid", "custom"):
            o = (d + pad[2 * i] + pad[2 * i + 1] - k) // strides[i] + 1
        elif pad_type in ("same", "same_lower"):
            o = -(-d // strides[i])
        else:
            raise MilError(f"conv: unknown pad_type {pad_type!r}")
        if o < 1:
            raise MilError("conv: output would be empty")
        out.append(o)
    return TensorType(x.dtype, tuple(out))


def _reduce(a: Args) -> TensorType:
    x = a.t("x")
    axes = a.ints("axes", None)
    axes = list(range(x.rank)) if axes is None else [_axis(e, x.rank, "axes") for e in axes]
    keep = a.flag("keep_dims")
    shp = [1 if i in axes else d for i, d in enumerate(x.shape)] if keep else [
        d for i, d in enumerate(x.shape) if i not in axes]  # fmt: skip
    return TensorType(x.dtype, tuple(shp))


def reshape_shape(src: tuple[int, ...], spec: list[int]) -> tuple[int, ...]:
    """iOS17 reshape: -1 inferred once; 0 copies the right-aligned input dim (1 out of range)."""
    out = []
    for i, s in enumerate(spec):
        if s == 0:
            j = len(src) - len(spec) + i
            out.append(src[j] if j >= 0 else 1)
        elif s > 0 or s == -1:
            out.append(s)
        else:
            raise MilError(f"reshape: bad size {s}")
    total = int(np.prod(src, dtype=np.int64))
    if out.count(-1) > 1:
        raise MilError("reshape: more than one -1")
    if -1 in out:
        rest = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if rest == 0 or total % rest:
            raise MilError(f"reshape: cannot infer -1 for {list(src)} -> {spec}")
        out[out.index(-1)] = total // rest
    if int(np.prod(out, dtype=np.int64)) != total:
        raise MilError(f"reshape: {list(src)} ({total} elements) -> {out} changes the volume")
    return tuple(out)


def _reshape(a: Args) -> TensorType:
    x = a.t("x")
    return TensorType(x.dtype, reshape_shape(x.shape, a.ints("shape")))


def _transpose(a: Args) -> TensorType:
    x = a.t("x")
    perm = [_axis(p, x.rank, "perm entry") for p in a.ints("perm")]
    if sorted(perm) != list(range(x.rank)):
        raise MilError(f"transpose: {perm} is not a permutation of rank {x.rank}")
    return TensorType(x.dtype, tuple(x.shape[p] for p in perm))


def slice_bounds(
    shape: tuple[int, ...], begin: list[int], size: list[int]
) -> list[tuple[int, int]]:
    if len(begin) != len(shape) or len(size) != len(shape):
        raise MilError(f"slice_by_size: begin/size need {len(shape)} entries")
    out = []
    for d, b, s in zip(shape, begin, size, strict=True):
        b = b + d if b < 0 else b
        e = d if s == -1 else b + s
        if not (0 <= b < d and b < e <= d):
            raise MilError(f"slice_by_size: begin {begin} size {size} outside {list(shape)}")
        out.append((b, e))
    return out


def _slice_by_size(a: Args) -> TensorType:
    x = a.t("x")
    b = slice_bounds(x.shape, a.ints("begin"), a.ints("size"))
    return TensorType(x.dtype, tuple(e - s for s, e in b))


def index_slices(a: Args, shape: tuple[int, ...]) -> tuple[list[slice], list[int]]:
    r = len(shape)
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride", [1] * r)
    bm = a.ints("begin_mask", [0] * r)
    em = a.ints("end_mask", [0] * r)
    sq = a.ints("squeeze_mask", [0] * r)
    if not all(len(v) == r for v in (begin, end, stride, bm, em, sq)) or 0 in stride:
        raise MilError(f"slice_by_index: parameters must have {r} entries and non-zero strides")
    sl, drop = [], []
    for i in range(r):
        if sq[i]:
            b = begin[i] % shape[i] if -shape[i] <= begin[i] < shape[i] else None
            if b is None:
                raise MilError(f"slice_by_index: squeeze index {begin[i]} out of range")
            sl.append(slice(b, b + 1))
            drop.append(i)
        else:
            sl.append(slice(None if bm[i] else begin[i], None if em[i] else end[i], stride[i]))
    return sl, drop


def _slice_by_index(a: Args) -> TensorType:
    x = a.t("x")
    sl, drop = index_slices(a, x.shape)
    shp = [len(range(*s.indices(d))) for s, d in zip(sl, x.shape, strict=True)]
    if 0 in shp:
        raise MilError("slice_by_index: empty result")
    return TensorType(x.dtype, tuple(d for i, d in enumerate(shp) if i not in drop))


def _concat(a: Args) -> TensorType:
    vs = a.ts("values")
    dt = _same(vs, "concat values")
    r = vs[0].rank
    ax = _axis(a.int("axis"), r)
    for v in vs:
        if v.rank != r or any(v.shape[i] != vs[0].shape[i] for i in range(r) if i != ax):
            raise MilError(f"concat: shapes {[list(v.shape) for v in vs]} differ off axis {ax}")
    if a.flag("interleave") and len({v.shape for v in vs}) != 1:
        raise MilError("concat: interleave needs identical shapes")
    shp = list(vs[0].shape)
    shp[ax] = sum(v.shape[ax] for v in vs)
    return TensorType(dt, tuple(shp))


def _expand_dims(a: Args) -> TensorType:
    x = a.t("x")
    axes = a.ints("axes")
    r = x.rank + len(axes)
    pos = sorted(_axis(e, r, "axes") for e in axes)
    shp = list(x.shape)
    for p in pos:
        shp.insert(p, 1)
    return TensorType(x.dtype, tuple(shp))


def _squeeze(a: Args) -> TensorType:
    x = a.t("x")
    axes = a.ints("axes", None)
    drop = {i for i, d in enumerate(x.shape) if d == 1} if axes is None else {
        _axis(e, x.rank, "axes") for e in axes if x.shape[e] == 1}  # fmt: skip
    return TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in drop))


def _tile(a: Args) -> TensorType:
    x = a.t("x")
    reps = a.ints("reps")
    if len(reps) != x.rank or min(reps) < 1:
        raise MilError(f"tile: reps {reps} must be {x.rank} positive entries")
    return TensorType(x.dtype, tuple(d * r for d, r in zip(x.shape, reps, strict=True)))


def _select(a: Args) -> TensorType:
    c, x, y = a.t("cond"), a.t("a"), a.t("b")
    if c.dtype != "bool":
        raise MilError("select: cond must be bool")
    dt = _same([x, y], "a and b")
    return TensorType(dt, broadcast(broadcast(c.shape, x.shape), y.shape))


def _layer_norm(a: Args) -> TensorType:
    x = a.t("x")
    _float(x)
    for e in a.ints("axes", list(range(x.rank))):
        _axis(e, x.rank, "axes")
    return TensorType(x.dtype, x.shape)


def _gelu(a: Args) -> TensorType:
    if a.c("mode", "EXACT") not in ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"):
        raise MilError("gelu: unknown mode")
    return _unary(a)


def _sdpa(a: Args) -> TensorType:
    q, k, v = a.t("query"), a.t("key"), a.t("value")
    _same([q, k, v], "query, key and value")
    if (
        q.rank < 3
        or not q.rank == k.rank == v.rank
        or q.shape[:-2] != k.shape[:-2]
        or k.shape[:-2] != v.shape[:-2]
        or q.shape[-1] != k.shape[-1]
        or k.shape[-2] != v.shape[-2]
    ):
        raise MilError("scaled_dot_product_attention: query/key/value shapes do not fit")
    return TensorType(q.dtype, q.shape[:-1] + (v.shape[-1],))


# ----------------------------------------------------------------------------
# the table

_B = ("x", "y")
OPS: dict[str, OpSpec] = {}
for _n in ("add", "sub", "mul", "real_div", "pow", "maximum", "minimum"):
    OPS[_n] = OpSpec(_B, (), (), _binary(False))
for _n in ("greater", "less", "greater_equal", "less_equal", "equal", "not_equal"):
    OPS[_n] = OpSpec(_B, (), (), _binary(True))
for _n in ("sqrt", "exp", "tanh", "sigmoid", "silu", "relu"):
    OPS[_n] = OpSpec(("x",), (), (), _unary)
for _n in ("rsqrt", "log"):
    OPS[_n] = OpSpec(("x",), ("epsilon",), ("epsilon",), _unary)
for _n in ("reduce_sum", "reduce_mean", "reduce_max"):
    OPS[_n] = OpSpec(("x",), ("axes", "keep_dims"), ("axes", "keep_dims"), _reduce)
_CONV = ("bias", "strides", "pad_type", "pad", "dilations", "groups")
_SLI = ("stride", "begin_mask", "end_mask", "squeeze_mask")
OPS.update({
    "clip": OpSpec(("x", "alpha", "beta"), (), ("alpha", "beta"), _clip),
    "cast": OpSpec(("x", "dtype"), (), ("dtype",), _cast),
    "softmax": OpSpec(("x",), ("axis",), ("axis",), _softmax),
    "matmul": OpSpec(_B, ("transpose_x", "transpose_y"), ("transpose_x", "transpose_y"), _matmul),
    "linear": OpSpec(("x", "weight"), ("bias",), (), _linear),
    "conv": OpSpec(("x", "weight"), _CONV, _CONV[1:], _conv),
    "reshape": OpSpec(("x", "shape"), (), ("shape",), _reshape),
    "transpose": OpSpec(("x", "perm"), (), ("perm",), _transpose),
    "slice_by_size": OpSpec(("x", "begin", "size"), (), ("begin", "size"), _slice_by_size),
    "slice_by_index": OpSpec(("x", "begin", "end"), _SLI, ("begin", "end") + _SLI, _slice_by_index),
    "concat": OpSpec(("values", "axis"), ("interleave",), ("axis", "interleave"), _concat),
    "expand_dims": OpSpec(("x", "axes"), (), ("axes",), _expand_dims),
    "squeeze": OpSpec(("x",), ("axes",), ("axes",), _squeeze),
    "tile": OpSpec(("x", "reps"), (), ("reps",), _tile),
    "select": OpSpec(("cond", "a", "b"), (), (), _select),
    "layer_norm": OpSpec(
        ("x",), ("axes", "gamma", "beta", "epsilon"), ("axes", "epsilon"), _layer_norm
    ),
    "gelu": OpSpec(("x",), ("mode",), ("mode",), _gelu),
    "scaled_dot_product_attention": OpSpec(("query", "key", "value"), ("attn_mask",), (), _sdpa),
})  # fmt: skip


def infer(op: str, types: dict[str, object], consts: dict[str, object]) -> TensorType:
    """Output type of `op` given its argument types and constant values; raises MilError."""
    spec = OPS.get(op)
    if spec is None:
        raise MilError(f"unknown or unsupported op {op!r}")
    for k in spec.required:
        if k not in types:
            raise MilError(f"missing argument {k!r}")
    extra = set(types) - set(spec.required) - set(spec.optional)
    if extra:
        raise MilError(f"unexpected argument(s) {sorted(extra)}")
    for k in spec.consts:
        if k in types and k not in consts:
            raise MilError(f"argument {k!r} must be a compile-time constant")
    return spec.infer(Args(op, types, consts))
