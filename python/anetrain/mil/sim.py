"""ANE simulator: numpy interpreter for parsed MIL (fp16 storage, FTZ, fp32/fp16 accumulation)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from anetrain.mil.check import Issue, check_program, enforce
from anetrain.mil.errors import MilError, MilOverflowWarning
from anetrain.mil.ir import NP_DTYPES, BlobRef, Literal, Program, Ref, TensorType
from anetrain.mil.ops import Args, index_slices, reshape_shape, slice_bounds
from anetrain.mil.parse import parse

# Numeric model (mil_reference.md §3.7): fp16 values are held as float32 arrays whose every element
# is exactly an fp16 number. Each op computes in float32 (matmul/conv/reductions accumulate in fp32,
# or in fp16 chunks of ACC_CHUNK products with accum="fp16") and rounds once to fp16 (RNE). With
# ftz, results whose magnitude is below the smallest normal 2^-14 become signed zero (§3.5: the
# 8e-5 x 0.036 gradient products maderix saw vanish). Data-movement ops (reshape, transpose,
# slice, concat, ...) return views/copies of already-rounded values and skip the rounding.
ACC_CHUNK = 32
_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
_LUT_EXACT = _BITS.view(np.float16).astype(np.float32)  # fp16 bits -> fp32 value
_LUT_FTZ = _LUT_EXACT.copy()
_LUT_FTZ[(_BITS & 0x7C00) == 0] = 0.0
_LUT_FTZ[(_BITS & 0xFC00) == 0x8000] = -0.0
_MOVES = {"reshape", "transpose", "slice_by_size", "slice_by_index", "expand_dims", "squeeze",
          "concat", "tile", "select", "maximum", "minimum", "relu"}  # fmt: skip


class _Cfg:
    def __init__(self, accum: str, ftz: bool):
        if accum not in ("fp32", "fp16"):
            raise MilError(f"sim: accum must be 'fp32' or 'fp16', got {accum!r}")
        self.accum, self.ftz = accum, ftz
        self.lut = _LUT_FTZ if ftz else _LUT_EXACT

    def r16(self, a) -> np.ndarray:
        """Round a float32 array to fp16 storage (RNE, then FTZ); result is float32."""
        h = np.asarray(a, dtype=np.float32).astype(np.float16)
        return self.lut[h.view(np.uint16)]


# ----------------------------------------------------------------------------
# op implementations: (cfg, **args) -> float32/int/bool array


def _chunked_sum(c: _Cfg, parts) -> np.ndarray:
    acc = None
    for p in parts:
        acc = c.r16(p if acc is None else acc + p)
    return acc  # type: ignore[return-value]


def _matmul(c: _Cfg, x, y, transpose_x=False, transpose_y=False):
    if bool(transpose_x):
        x = np.swapaxes(x, -1, -2)
    if bool(transpose_y):
        y = np.swapaxes(y, -1, -2)
    if c.accum == "fp32" or x.ndim < 2 or y.ndim < 2:
        return np.matmul(x, y)
    k = x.shape[-1]
    return _chunked_sum(c, (np.matmul(x[..., i:i + ACC_CHUNK], y[..., i:i + ACC_CHUNK, :])
                            for i in range(0, k, ACC_CHUNK)))  # fmt: skip


def _reduce(kind: str):
    def f(c: _Cfg, x, axes=None, keep_dims=False):
        ax = (
            tuple(range(x.ndim)) if axes is None else tuple(int(a) % x.ndim for a in np.ravel(axes))
        )
        keep = bool(keep_dims)
        if kind == "max":
            return np.max(x, axis=ax, keepdims=keep)
        if c.accum == "fp32":
            s = np.sum(x, axis=ax, keepdims=keep, dtype=np.float32)
        else:
            moved = np.moveaxis(x, ax, tuple(range(x.ndim - len(ax), x.ndim)))
            flat = moved.reshape(moved.shape[: x.ndim - len(ax)] + (-1,))  # (..., prod(axes))
            s = _chunked_sum(
                c,
                (flat[..., i : i + ACC_CHUNK].sum(-1) for i in range(0, flat.shape[-1], ACC_CHUNK)),
            )
            s = s.reshape([1 if i in ax else d for i, d in enumerate(x.shape)]) if keep else s
        if kind == "mean":
            s = s / np.float32(np.prod([x.shape[a] for a in ax]))
        return s

    return f


def _softmax(c: _Cfg, x, axis=-1):
    ax = int(axis)
    e = np.exp(x - np.max(x, axis=ax, keepdims=True))
    return e / np.sum(e, axis=ax, keepdims=True)


def _conv(c: _Cfg, x, weight, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    n = x.ndim - 2
    st = [int(v) for v in np.ravel(strides)] if strides is not None else [1] * n
    dl = [int(v) for v in np.ravel(dilations)] if dilations is not None else [1] * n
    g = int(groups)
    if pad_type == "custom" and pad is not None:
        pd = [int(v) for v in np.ravel(pad)]
    elif pad_type in ("same", "same_lower"):
        pd = []
        for i in range(n):
            k = (weight.shape[2 + i] - 1) * dl[i] + 1
            d = x.shape[2 + i]
            tot = max(0, st[i] * (-(-d // st[i])) - d + k - st[i])
            lo = tot - tot // 2 if pad_type == "same_lower" else tot // 2
            pd += [lo, tot - lo]
    else:
        pd = [0] * (2 * n)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pd[2 * i], pd[2 * i + 1]) for i in range(n)])
    ks = weight.shape[2:]
    span = [(k - 1) * d + 1 for k, d in zip(ks, dl, strict=True)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span,
                                                   axis=tuple(range(2, 2 + n)))  # fmt: skip
    win = win[(Ellipsis,) + tuple(slice(None, None, d) for d in dl)]  # dilate the window
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in st)]
    N, C = x.shape[:2]
    O = weight.shape[0]
    outs = []
    for gi in range(g):  # (N, Cg, *out, *K) x (Og, Cg, *K) -> (N, Og, *out)
        xw = win[:, gi * C // g : (gi + 1) * C // g]
        wg = weight[gi * O // g : (gi + 1) * O // g]
        xw = np.moveaxis(xw, 1, 1 + n)  # (N, *out, Cg, *K)
        cols = xw.reshape(xw.shape[: 1 + n] + (-1,))
        r = np.matmul(cols, wg.reshape(wg.shape[0], -1).T)  # (N, *out, Og)
        outs.append(np.moveaxis(r, -1, 1))
    return np.concatenate(outs, axis=1)


def _layer_norm(c: _Cfg, x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    ax = tuple(range(x.ndim)) if axes is None else tuple(int(a) % x.ndim for a in np.ravel(axes))
    m = x.mean(axis=ax, keepdims=True)
    y = (x - m) / np.sqrt(((x - m) ** 2).mean(axis=ax, keepdims=True) + np.float32(epsilon))
    return y * (1 if gamma is None else gamma) + (0 if beta is None else beta)


def _gelu(c: _Cfg, x, mode="EXACT"):
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.float32(np.sqrt(2 / np.pi)) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1 + np.exp(-1.702 * x))
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf, otypes=[np.float32])(x / np.float32(np.sqrt(2))))


def _concat(c: _Cfg, values, axis, interleave=False):
    ax = int(axis) % values[0].ndim
    if bool(interleave) and len(values) > 1:  # out[i::n] = values[i] along axis
        st = np.stack(values, axis=ax + 1)
        return st.reshape(values[0].shape[:ax] + (-1,) + values[0].shape[ax + 1 :])
    return np.concatenate(values, axis=ax)


def _slice_by_size(c: _Cfg, x, begin, size):
    b = slice_bounds(x.shape, [int(v) for v in begin], [int(v) for v in size])
    return x[tuple(slice(s, e) for s, e in b)]


def _slice_by_index(c: _Cfg, x, **kw):
    sl, drop = index_slices(Args("slice_by_index", dict.fromkeys(kw), kw), x.shape)
    r = x[tuple(sl)]
    return r.reshape([d for i, d in enumerate(r.shape) if i not in drop])


def _squeeze(c: _Cfg, x, axes=None):
    ax = [int(a) % x.ndim for a in np.ravel(axes)] if axes is not None else range(x.ndim)
    return np.squeeze(x, axis=tuple(a for a in ax if x.shape[a] == 1))


def _sdpa(c: _Cfg, query, key, value, attn_mask=None):
    s = np.matmul(query, np.swapaxes(key, -1, -2)) / np.float32(np.sqrt(query.shape[-1]))
    return np.matmul(_softmax(c, s), value)


def _cast(c: _Cfg, x, dtype):
    return (
        x.astype(NP_DTYPES[str(dtype)]) if dtype not in ("fp16", "fp32") else x.astype(np.float32)
    )


def _constant_moves(op: str, fixed: dict, t: TensorType) -> Callable | None:
    """reshape / transpose / slice_by_size whose parameters are constants (every kernel's are):
    the target shape, perm or slice is resolved once here instead of on every evaluation (the
    static type check has already validated it against the input's shape). Consumes the
    parameters from `fixed`; None for anything else."""
    if op == "reshape" and "shape" in fixed:
        del fixed["shape"]
        return lambda c, x, shape=t.shape: x.reshape(shape)
    if op == "transpose" and "perm" in fixed:
        perm = tuple(int(v) for v in fixed.pop("perm"))
        return lambda c, x: np.transpose(x, perm)
    if op == "slice_by_size" and "begin" in fixed and "size" in fixed:
        begin = [int(v) for v in fixed["begin"]]
        if min(begin) < 0:  # counted from the end: needs the input's shape
            return None
        del fixed["begin"], fixed["size"]
        sl = tuple(slice(b, b + n) for b, n in zip(begin, t.shape, strict=True))
        return lambda c, x: x[sl]
    return None


IMPL: dict[str, Callable] = {
    "add": lambda c, x, y: np.add(x, y), "sub": lambda c, x, y: np.subtract(x, y),
    "mul": lambda c, x, y: np.multiply(x, y), "real_div": lambda c, x, y: np.divide(x, y),
    "pow": lambda c, x, y: np.power(x, y), "maximum": lambda c, x, y: np.maximum(x, y),
    "minimum": lambda c, x, y: np.minimum(x, y), "greater": lambda c, x, y: np.greater(x, y),
    "less": lambda c, x, y: np.less(x, y), "greater_equal": lambda c, x, y: np.greater_equal(x, y),
    "less_equal": lambda c, x, y: np.less_equal(x, y), "equal": lambda c, x, y: np.equal(x, y),
    "not_equal": lambda c, x, y: np.not_equal(x, y),
    "sqrt": lambda c, x: np.sqrt(x), "exp": lambda c, x: np.exp(x), "tanh": lambda c, x: np.tanh(x),
    "sigmoid": lambda c, x: 1 / (1 + np.exp(-x)), "silu": lambda c, x: x / (1 + np.exp(-x)),
    "relu": lambda c, x: np.maximum(x, np.float32(0)),
    "rsqrt": lambda c, x, epsilon=1e-12: 1 / np.sqrt(x + np.float32(epsilon)),
    "log": lambda c, x, epsilon=1e-45: np.log(x + np.float32(epsilon)),
    "clip": lambda c, x, alpha, beta: np.clip(x, alpha, beta), "cast": _cast,
    "softmax": _softmax, "matmul": _matmul, "conv": _conv,
    "linear": lambda c, x, weight, bias=None: x @ weight.T + (0 if bias is None else bias),
    "reduce_sum": _reduce("sum"), "reduce_mean": _reduce("mean"), "reduce_max": _reduce("max"),
    "reshape": lambda c, x, shape: x.reshape(reshape_shape(x.shape, [int(v) for v in shape])),
    "transpose": lambda c, x, perm: np.transpose(x, [int(v) for v in perm]),
    "slice_by_size": _slice_by_size, "slice_by_index": _slice_by_index, "concat": _concat,
    "squeeze": _squeeze,
    "expand_dims": lambda c, x, axes: np.expand_dims(x, tuple(int(a) for a in np.ravel(axes))),
    "tile": lambda c, x, reps: np.tile(x, [int(r) for r in reps]),
    "select": lambda c, cond, a, b: np.where(cond, a, b), "layer_norm": _layer_norm,
    "gelu": _gelu, "scaled_dot_product_attention": _sdpa,
}  # fmt: skip


# ----------------------------------------------------------------------------
# compiled program


class Simulation:
    """A parsed, checked and prepared program; call it many times with different inputs.

    `sim = Simulation(text, weights)`; `y = sim(x)` with x any float array of the input shape
    (rounded to fp16 as a surface write would), y an fp16 array of the output shape.
    """

    def __init__(self, program: str | Program, weights: dict[str, bytes] | None = None, *,
                 accum: str = "fp32", ftz: bool = True, strict: bool = False,
                 check: bool = True):  # fmt: skip
        self.prog = parse(program) if isinstance(program, str) else program
        self.cfg = _Cfg(accum, ftz)
        issues, blobs = check_program(self.prog, weights or {})
        self.issues: list[Issue] = issues
        if check:
            enforce(issues, strict)
        elif any(i.rule == "blob" for i in issues):
            enforce([i for i in issues if i.rule == "blob"])
        f = (
            self.prog.functions["main"]
            if "main" in self.prog.functions
            else next(iter(self.prog.functions.values()))
        )
        if len(f.params) != 1 or len(f.outputs) != 1:
            raise MilError("sim: the simulator runs one-input one-output functions")
        self.input_type: TensorType = f.params[0][0]  # type: ignore[assignment]
        self.input_name = f.params[0][1]
        self.output_name = f.outputs[0]
        self.env0: dict[str, object] = {}
        self.steps: list[Callable[[dict], None]] = []
        for s in f.stmts:
            t, name = s.results[0]
            if s.op == "const":
                v: Literal = s.attrs["val"]
                val = (
                    blobs[(v.value.path, v.value.offset)]
                    if isinstance(v.value, BlobRef)
                    else v.value
                )
                self.env0[name] = self._const(val, t)  # type: ignore[arg-type]
                continue
            if s.op not in IMPL:
                raise MilError(f"{s.where()}: the simulator does not implement {s.op!r}")
            self.steps.append(self._step(s, t, name))  # type: ignore[arg-type]
        self.events: list[str] = []

    def _const(self, val, t: TensorType):
        if isinstance(val, str):
            return val
        a = np.asarray(val)
        return a.astype(np.float32) if t.dtype in ("fp16", "fp32") else a

    def _step(self, s, t: TensorType, out: str) -> Callable[[dict], None]:
        impl, cfg, where = IMPL[s.op], self.cfg, s.where()
        fixed: dict[str, object] = {}
        refs: list[tuple[str, str]] = []
        tups: list[tuple[str, list[str]]] = []
        for k, b in s.args.items():
            if isinstance(b, tuple):
                tups.append((k, [e.name for e in b]))
            elif isinstance(b, Ref):
                if b.name in self.env0:
                    fixed[k] = self.env0[b.name]
                else:
                    refs.append((k, b.name))
            else:
                fixed[k] = self._const(b.value, b.type)
        impl = _constant_moves(s.op, fixed, t) or impl
        exact = s.op in _MOVES
        fp16 = t.dtype == "fp16"
        npdt = NP_DTYPES.get(t.dtype)
        events = self

        def step(env: dict) -> None:
            kw = dict(fixed)
            for k, n in refs:
                kw[k] = env[n]
            for k, ns in tups:
                kw[k] = [env[n] for n in ns]
            r = impl(cfg, **kw)
            if fp16 and not exact:
                r = cfg.r16(r)
                if not np.isfinite(np.sum(r, dtype=np.float32)):
                    n_inf, n_nan = int(np.isinf(r).sum()), int(np.isnan(r).sum())
                    if n_inf or n_nan:
                        events.events.append(f"{where}: {n_inf} inf, {n_nan} NaN in {out!r}")
            elif not fp16 and npdt is not None and not isinstance(r, str):
                r = np.asarray(r).astype(np.float32 if t.dtype == "fp32" else npdt, copy=False)
            env[out] = r

        return step

    def values(self, x: np.ndarray) -> dict[str, object]:
        """Evaluate on x and return every named value: the constants, the input and each op's
        result (fp16 ones as float32 arrays of fp16 numbers). Tests inspect intermediates here."""
        x = np.asarray(x)
        if x.shape != self.input_type.shape:
            if x.size != self.input_type.size:
                raise MilError(
                    f"sim: input has {x.size} elements, program expects {self.input_type}"
                )
            x = x.reshape(self.input_type.shape)
        h = x if x.dtype == np.float16 else x.astype(np.float16)
        env = dict(self.env0)
        env[self.input_name] = self.cfg.lut[h.view(np.uint16)]
        self.events = []
        with np.errstate(all="ignore"):
            for step in self.steps:
                step(env)
        return env

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(self.values(x)[self.output_name]).astype(np.float16)
        if self.events and not np.isfinite(y).all():
            warnings.warn(
                "sim: non-finite output; first: " + self.events[0], MilOverflowWarning, stacklevel=2
            )
        return y

    def run_bytes(self, input_bytes: bytes) -> bytes:
        want = self.input_type.size * 2
        if len(input_bytes) != want:
            raise MilError(
                f"sim: input is {len(input_bytes)} bytes, {self.input_type} needs {want}"
            )
        return self(np.frombuffer(input_bytes, dtype="<f2")).tobytes()


_CACHE: dict[tuple, Simulation] = {}


def run(program_text: str, weights: dict[str, bytes], input_bytes: bytes, *,
        accum: str = "fp32", ftz: bool = True) -> bytes:  # fmt: skip
    """Evaluate MIL text on fp16 input bytes ([1,C,1,W] packed row-major) -> fp16 output bytes.

    Parsed programs are cached by (text, weights, accum, ftz), so repeated calls parse once.
    """
    key = (program_text, tuple(sorted((k, hash(v)) for k, v in weights.items())), accum, ftz)
    sim = _CACHE.get(key)
    if sim is None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        sim = _CACHE[key] = Simulation(program_text, weights, accum=accum, ftz=ftz)
    return sim.run_bytes(input_bytes)
