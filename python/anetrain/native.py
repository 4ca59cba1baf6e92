"""Typed numpy wrappers over anetrain._native: fp16 conversion, surface packing and CPU ops.

Every array argument is checked for dtype (float32 / uint16 / int32), C-contiguity and shape, and a
ValueError names the offending argument. Activations are channel-first [C, S] everywhere. Outputs
are allocated when `out=None`. Calls release the GIL (cffi API mode), so `threads > 1` splits large
elementwise work into contiguous chunks run on a module-level thread pool.

Debug knob (read once at import through `getenv`):
    ANETRAIN_FORCE_SCALAR=1  make impl=-1 ("best") mean the scalar fp16 reference implementation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from anetrain._native import ffi, lib
from anetrain.config import default_threads

# anet.h's fp16 implementations by name
IMPLS = {"scalar": lib.ANET_FP16_SCALAR, "f16c": lib.ANET_FP16_F16C, "neon": lib.ANET_FP16_NEON,
         "avx512": lib.ANET_FP16_AVX512}  # fmt: skip
# A target id that carries no loss (masked prompt tokens, padding): cross_entropy skips it.
IGNORE: int = lib.ANET_IGNORE
_CHUNK_ALIGN = 4096  # elements; chunk boundaries stay cache-line and vector aligned
_MIN_PARALLEL = 1 << 16  # below this many elements threads are not worth their overhead
_PIECES = 8  # at most this many ranges per thread for large jobs (see _chunks)
_MIN_PIECE = 1 << 18  # elements; smaller ranges are not worth a pool task each


def getenv(key: str, default: int = 0) -> int:
    """Integer debug knob from the environment (unset or blank: default)."""
    value = os.environ.get(key, "").strip()
    return int(value) if value else default


FORCE_SCALAR: bool = getenv("ANETRAIN_FORCE_SCALAR", 0) != 0

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        # a ceiling for the callers' `threads`; at least 2, so chunked ops are tested on 1 core too
        _pool = ThreadPoolExecutor(max(2, default_threads()), thread_name_prefix="anet-native")
    return _pool


# ---- argument checks -----------------------------------------------------------------------------


def _arr(name: str, a: object, dtype: type, ndim: int | None = None,
         shape: tuple[int, ...] | None = None, writable: bool = False) -> np.ndarray:  # fmt: skip
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (use np.ascontiguousarray)")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim}-D, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    return a


def _out(name: str, out: np.ndarray | None, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    return _arr(name, out, dtype, shape=shape, writable=True)


def _tokens(name: str, tok: object, ndim: int = 1) -> np.ndarray:
    """Any integer array -> C-contiguous int32 (a copy only when needed)."""
    a = np.asarray(tok)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim}-D, got shape {a.shape}")
    if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
        raise ValueError(f"{name}: ids do not fit in int32")
    return np.ascontiguousarray(a, dtype=np.int32)


def _check_range(name: str, ids: np.ndarray, hi: int, lo: int = 0) -> None:
    bad = np.flatnonzero((ids < lo) | (ids >= hi))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}: id {int(ids[i])} at position {i} is outside [{lo}, {hi})")


def _f32(a: np.ndarray) -> object:
    return ffi.from_buffer("float[]", a)


def _u16(a: np.ndarray) -> object:
    return ffi.from_buffer("uint16_t[]", a)


def _i32(a: np.ndarray) -> object:
    return ffi.from_buffer("int32_t[]", a)


def _chunks(
    n: int,
    threads: int,
    align: int = _CHUNK_ALIGN,
    min_n: int = _MIN_PARALLEL,
    phase: int = 0,
    unit: int = 1,
) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges covering [0, n), inner boundaries b at (b + phase) % align == 0.

    unit: elements of work per index (V per cross-entropy position, S*S per score matrix). One
    range when threads <= 1 or the work n*unit < min_n. Large jobs get up to _PIECES
    ranges per thread, which pool threads take as they free up: a thread sharing its core with a
    spinning OpenBLAS worker (they spin ~0.1 s after every sgemm) then does fewer instead of
    holding up the others.
    """
    if threads <= 1 or n < 2 or n * unit < min_n:
        return [(0, n)]
    pieces = threads * max(1, min(_PIECES, n * unit // (threads * _MIN_PIECE)))
    cuts = [0]
    for i in range(1, pieces):
        c = -(-(i * n // pieces + phase) // align) * align - phase  # rounded up to a boundary
        if cuts[-1] < c < n:
            cuts.append(c)
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:]))


def _run_chunks(
    fn: Callable[[int, int], object],
    n: int,
    threads: int,
    align: int = _CHUNK_ALIGN,
    phase: int = 0,
    unit: int = 1,
) -> list[object]:
    """fn(lo, hi) over _chunks(n, threads, align, phase=phase, unit=unit) on the pool; results
    in range order."""
    ranges = _chunks(n, threads, align, phase=phase, unit=unit)
    if len(ranges) == 1:
        return [fn(*ranges[0])]
    futures = [_executor().submit(fn, lo, hi) for lo, hi in ranges]
    return [f.result() for f in futures]


# ---- fp16 conversion -----------------------------------------------------------------------------


def fp16_impls() -> dict[str, bool]:
    """Which fp16 implementations this build and CPU can run."""
    return {name: bool(lib.anet_fp16_impl_available(i)) for name, i in IMPLS.items()}


def best_impl() -> str:
    """Name of the implementation impl=-1 uses (honours ANETRAIN_FORCE_SCALAR)."""
    best = _impl_id(-1)
    return next(name for name, i in IMPLS.items() if i == best)


def _impl_id(impl: int | str) -> int:
    if isinstance(impl, str):
        if impl not in IMPLS:
            raise ValueError(f"unknown fp16 impl {impl!r}; known: {sorted(IMPLS)}")
        impl = IMPLS[impl]
    if impl == -1:
        return 0 if FORCE_SCALAR else int(lib.anet_fp16_best_impl())
    if not lib.anet_fp16_impl_available(impl):
        raise ValueError(f"fp16 impl {impl} is not available on this machine ({fp16_impls()})")
    return impl


def f32_to_f16(
    x: np.ndarray, out: np.ndarray | None = None, impl: int | str = -1, threads: int = 1
) -> np.ndarray:
    """fp32 -> fp16 bit patterns (uint16, same shape), round-to-nearest-even."""
    x = _arr("x", x, np.float32)
    out = _out("out", out, np.uint16, x.shape)
    k = _impl_id(impl)
    xs, hs = x.reshape(-1), out.reshape(-1)

    def run(lo: int, hi: int) -> int:
        return lib.anet_f32_to_f16(_u16(hs[lo:hi]), _f32(xs[lo:hi]), hi - lo, k)

    if any(rc != 0 for rc in _run_chunks(run, xs.size, threads)):
        raise ValueError(f"fp16 impl {k} failed")
    return out


def f16_to_f32(
    h: np.ndarray, out: np.ndarray | None = None, impl: int | str = -1, threads: int = 1
) -> np.ndarray:
    """fp16 bit patterns (uint16) -> fp32 (exact), same shape."""
    h = _arr("h", h, np.uint16)
    out = _out("out", out, np.float32, h.shape)
    k = _impl_id(impl)
    hs, xs = h.reshape(-1), out.reshape(-1)

    def run(lo: int, hi: int) -> int:
        return lib.anet_f16_to_f32(_f32(xs[lo:hi]), _u16(hs[lo:hi]), hi - lo, k)

    if any(rc != 0 for rc in _run_chunks(run, hs.size, threads)):
        raise ValueError(f"fp16 impl {k} failed")
    return out


# ---- surface packing ([C, W] fp16) ---------------------------------------------------------------


def pack(dst: np.ndarray, c0: int, s0: int, src: np.ndarray, transpose: bool = False) -> None:
    """Write fp32 src [rows, cols] as fp16 into surface dst [C, W] at (c0, s0).

    transpose=False: segment [rows, cols] (src row r -> channel c0+r).
    transpose=True: segment [cols, rows] (src column j -> channel c0+j).
    """
    dst = _arr("dst", dst, np.uint16, ndim=2, writable=True)
    src = _arr("src", src, np.float32, ndim=2)
    rows, cols = src.shape
    rc = lib.anet_pack_f16(_u16(dst), dst.shape[0], dst.shape[1], c0, s0, _f32(src), rows, cols,
                           int(bool(transpose)), _impl_id(-1))  # fmt: skip
    if rc != 0:
        seg = (cols, rows) if transpose else (rows, cols)
        raise ValueError(
            f"pack: segment {seg} at (c0={c0}, s0={s0}) does not fit in dst of shape {dst.shape}"
        )


def unpack(
    src: np.ndarray, c0: int, s0: int, rows: int, cols: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Read the fp16 segment [rows, cols] at (c0, s0) of surface src [C, W] as fp32 [rows, cols]."""
    src = _arr("src", src, np.uint16, ndim=2)
    if rows < 0 or cols < 0:
        raise ValueError(f"unpack: negative segment shape ({rows}, {cols})")
    out = _out("out", out, np.float32, (rows, cols))
    rc = lib.anet_unpack_f16(_f32(out), _u16(src), src.shape[0], src.shape[1], c0, s0, rows, cols,
                             _impl_id(-1))  # fmt: skip
    if rc != 0:
        raise ValueError(
            f"unpack: segment ({rows}, {cols}) at (c0={c0}, s0={s0}) does not fit in "
            f"src of shape {src.shape}"
        )
    return out


def copy(
    dst: np.ndarray,
    dst_c0: int,
    dst_s0: int,
    src: np.ndarray,
    src_c0: int,
    src_s0: int,
    nch: int,
    width: int,
) -> None:
    """Copy the fp16 segment [nch, width] at (src_c0, src_s0) of src to (dst_c0, dst_s0) of dst."""
    dst = _arr("dst", dst, np.uint16, ndim=2, writable=True)
    src = _arr("src", src, np.uint16, ndim=2)
    rc = lib.anet_copy_f16(
        _u16(dst),
        dst.shape[0],
        dst.shape[1],
        dst_c0,
        dst_s0,
        _u16(src),
        src.shape[0],
        src.shape[1],
        src_c0,
        src_s0,
        nch,
        width,
    )
    if rc != 0:
        raise ValueError(
            f"copy: segment ({nch}, {width}) from (c0={src_c0}, s0={src_s0}) of src "
            f"{src.shape} to (c0={dst_c0}, s0={dst_s0}) of dst {dst.shape} is out of "
            f"range"
        )


# ---- exp -----------------------------------------------------------------------------------------


def exp(x: np.ndarray, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """exp(x) elementwise (any shape) with the C ops' own exp; out may be x."""
    x = _arr("x", x, np.float32)
    out = _out("out", out, np.float32, x.shape)
    po, px = _f32(out), _f32(x)
    _run_chunks(lambda lo, hi: lib.anet_exp(po + lo, px + lo, hi - lo), x.size, threads)
    return out


# ---- RMSNorm -------------------------------------------------------------------------------------


def rmsnorm_fwd(
    x: np.ndarray,
    w: np.ndarray,
    eps: float,
    out: np.ndarray | None = None,
    rrms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """y [D,S] = w * x * rrms, rrms [S] = 1/sqrt(mean_d x^2 + eps). out may be x."""
    x = _arr("x", x, np.float32, ndim=2)
    D, S = x.shape
    w = _arr("w", w, np.float32, shape=(D,))
    out = _out("out", out, np.float32, (D, S))
    rrms = _out("rrms", rrms, np.float32, (S,))
    lib.anet_rmsnorm_fwd(_f32(out), _f32(rrms), _f32(x), _f32(w), D, S, eps)
    return out, rrms


def rmsnorm_bwd(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    rrms: np.ndarray,
    dw: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """dx [D,S] from dy [D,S]; dw [D] is accumulated in place. out may be dy."""
    x = _arr("x", x, np.float32, ndim=2)
    D, S = x.shape
    dy = _arr("dy", dy, np.float32, shape=(D, S))
    w = _arr("w", w, np.float32, shape=(D,))
    rrms = _arr("rrms", rrms, np.float32, shape=(S,))
    dw = _arr("dw", dw, np.float32, shape=(D,), writable=True)
    out = _out("out", out, np.float32, (D, S))
    lib.anet_rmsnorm_bwd(_f32(out), _f32(dw), _f32(dy), _f32(x), _f32(w), _f32(rrms), D, S)
    return out


# ---- cross-entropy -------------------------------------------------------------------------------


def cross_entropy(
    logits: np.ndarray,
    targets: np.ndarray,
    scale: float = 1.0,
    out: np.ndarray | None = None,
    threads: int = 1,
) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over logits [V,S] and targets [S], over the n positions whose
    target is not IGNORE; dlogits = (p - onehot)*scale/n, and 0 in an ignored position's column.
    No counted position: loss 0 and dlogits 0.

    out may be logits itself (gradient written in place). threads > 1 splits the positions; the
    loss is the same for any thread count (per-position losses summed in one fixed order).
    """
    logits = _arr("logits", logits, np.float32, ndim=2)
    V, S = logits.shape
    tgt = _tokens("targets", targets)
    if tgt.shape != (S,):
        raise ValueError(f"targets: expected shape ({S},), got {tgt.shape}")
    _check_range("targets", tgt, V, lo=IGNORE)
    counted = counted_targets(tgt)
    out = _out("out", out, np.float32, (V, S))
    if counted == 0:
        out[...] = 0.0
        return 0.0, out
    losses = np.empty(S, dtype=np.float64)  # [S] per-position loss
    pd, pl, px, pt = _f32(out), ffi.from_buffer("double[]", losses), _f32(logits), _i32(tgt)

    def run(lo: int, hi: int) -> int:
        return lib.anet_cross_entropy(pd, pl, px, pt, V, S, lo, hi, scale, counted)

    # Split positions at 64-byte lines of `out` (numpy's large arrays start 16 bytes into one),
    # so two threads never write the same cache line of a row.
    phase = (out.ctypes.data % 64) // 4
    if any(_run_chunks(run, S, threads, align=16, phase=phase, unit=V)):
        raise ValueError("cross_entropy: target id out of range")
    return float(losses.sum()) / counted, out


def counted_targets(targets: np.ndarray) -> int:
    """How many positions of targets [S] carry loss (their id is not IGNORE)."""
    return int(np.count_nonzero(np.asarray(targets) != IGNORE))


# ---- SwiGLU --------------------------------------------------------------------------------------


def swiglu_fwd(
    h1: np.ndarray, h3: np.ndarray, out: np.ndarray | None = None, threads: int = 1
) -> np.ndarray:
    """gate = silu(h1) * h3, elementwise (any shape); threads > 1 splits it into chunks."""
    h1 = _arr("h1", h1, np.float32)
    h3 = _arr("h3", h3, np.float32, shape=h1.shape)
    out = _out("out", out, np.float32, h1.shape)
    po, p1, p3 = _f32(out), _f32(h1), _f32(h3)
    _run_chunks(
        lambda lo, hi: lib.anet_swiglu_fwd(po + lo, p1 + lo, p3 + lo, hi - lo), h1.size, threads
    )
    return out


def swiglu_bwd(
    dgate: np.ndarray,
    h1: np.ndarray,
    h3: np.ndarray,
    dh1: np.ndarray | None = None,
    dh3: np.ndarray | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(dh1, dh3) from dgate; dh1/dh3 may be dgate (in place); threads > 1 splits into chunks."""
    h1 = _arr("h1", h1, np.float32)
    h3 = _arr("h3", h3, np.float32, shape=h1.shape)
    dgate = _arr("dgate", dgate, np.float32, shape=h1.shape)
    dh1 = _out("dh1", dh1, np.float32, h1.shape)
    dh3 = _out("dh3", dh3, np.float32, h1.shape)
    if dh1.size and np.may_share_memory(dh1, dh3):
        raise ValueError("swiglu_bwd: dh1 and dh3 must not overlap")
    p1, p3, pg, q1, q3 = _f32(dh1), _f32(dh3), _f32(dgate), _f32(h1), _f32(h3)
    _run_chunks(
        lambda lo, hi: lib.anet_swiglu_bwd(p1 + lo, p3 + lo, pg + lo, q1 + lo, q3 + lo, hi - lo),
        h1.size,
        threads,
    )
    return dh1, dh3


# ---- causal attention softmax --------------------------------------------------------------------


def _scores(name: str, a: object, writable: bool = False) -> tuple[np.ndarray, int, int]:
    a = _arr(name, a, np.float32, ndim=3, writable=writable)
    n, S, S2 = a.shape
    if S != S2:
        raise ValueError(f"{name}: expected (n, S, S) score matrices, got shape {a.shape}")
    return a, n, S


def causal_softmax(p: np.ndarray, scale: float, threads: int = 1) -> np.ndarray:
    """In place on p (n, S_query, S_key): row t -> softmax(scale * p[t, :t+1]), zeros after it.

    Only the lower triangle is read; threads > 1 splits the n matrices (heads).
    """
    p, n, S = _scores("p", p, writable=True)
    pp = _f32(p)
    _run_chunks(
        lambda lo, hi: lib.anet_causal_softmax(pp + lo * S * S, hi - lo, S, scale),
        n,
        threads,
        align=1,
        unit=S * S,
    )
    return p


def causal_softmax_bwd(
    p: np.ndarray,
    dp: np.ndarray,
    scale: float,
    out: np.ndarray | None = None,
    threads: int = 1,
) -> np.ndarray:
    """ds = (dp - rowsum(p * dp)) * p * scale for causal probabilities p (n, S, S); 0 above the
    diagonal. out may be dp (in place); threads > 1 splits the n matrices."""
    p, n, S = _scores("p", p)
    dp = _arr("dp", dp, np.float32, shape=p.shape)
    out = _out("out", out, np.float32, p.shape)
    po, pp, pd = _f32(out), _f32(p), _f32(dp)
    _run_chunks(
        lambda lo, hi: lib.anet_causal_softmax_bwd(
            po + lo * S * S, pp + lo * S * S, pd + lo * S * S, hi - lo, S, scale
        ),
        n,
        threads,
        align=1,
        unit=S * S,
    )
    return out


# ---- RoPE ----------------------------------------------------------------------------------------


def _rope_args(
    x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_heads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    x = _arr("x", x, np.float32, ndim=2, writable=True)
    C, S = x.shape
    if n_heads <= 0 or C % n_heads or (C // n_heads) % 2:
        raise ValueError(f"rope: {C} channels do not split into {n_heads} heads of even size")
    hd = C // n_heads
    cos = _arr("cos", cos, np.float32, ndim=2)
    sin = _arr("sin", sin, np.float32, shape=cos.shape)
    if cos.shape[1] != hd // 2 or cos.shape[0] < S:
        raise ValueError(f"rope: tables must be [>= {S}, {hd // 2}], got {cos.shape}")
    return x, cos, sin, hd, S


def rope_fwd(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_heads: int) -> np.ndarray:
    """Rotate x [n_heads*hd, S] in place (tables [S', hd/2] with S' >= S; rows 0..S-1 used)."""
    x, cos, sin, hd, S = _rope_args(x, cos, sin, n_heads)
    if lib.anet_rope_fwd(_f32(x), _f32(cos), _f32(sin), n_heads, hd, S):
        raise MemoryError("rope: no memory for the transposed tables")
    return x


def rope_bwd(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse (= transpose) rotation in place: the backward of rope_fwd."""
    x, cos, sin, hd, S = _rope_args(x, cos, sin, n_heads)
    if lib.anet_rope_bwd(_f32(x), _f32(cos), _f32(sin), n_heads, hd, S):
        raise MemoryError("rope: no memory for the transposed tables")
    return x


# ---- embedding -----------------------------------------------------------------------------------


def embed_fwd(emb: np.ndarray, tok: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x [D,S] with x[:, t] = emb[tok[t]] (emb [V,D], tok [S])."""
    emb = _arr("emb", emb, np.float32, ndim=2)
    V, D = emb.shape
    tok = _tokens("tok", tok)
    _check_range("tok", tok, V)
    S = tok.shape[0]
    out = _out("out", out, np.float32, (D, S))
    if lib.anet_embed_fwd(_f32(out), _f32(emb), _i32(tok), V, D, S) != 0:
        raise ValueError("embed_fwd: token id out of range")
    return out


def embed_bwd(demb: np.ndarray, dx: np.ndarray, tok: np.ndarray) -> None:
    """demb[tok[t]] += dx[:, t] in place (repeated tokens accumulate)."""
    demb = _arr("demb", demb, np.float32, ndim=2, writable=True)
    V, D = demb.shape
    tok = _tokens("tok", tok)
    _check_range("tok", tok, V)
    S = tok.shape[0]
    dx = _arr("dx", dx, np.float32, shape=(D, S))
    if lib.anet_embed_bwd(_f32(demb), _f32(dx), _i32(tok), V, D, S) != 0:
        raise ValueError("embed_bwd: token id out of range")


# ---- optimizer -----------------------------------------------------------------------------------


def adamw(
    p: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    g: np.ndarray,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    wd: float,
    grad_scale: float = 1.0,
    step: int,
    threads: int = 1,
) -> None:
    """One torch.optim.AdamW step in place on 1-D fp32 p, m, v with gradient g * grad_scale."""
    p = _arr("p", p, np.float32, ndim=1, writable=True)
    n = p.shape[0]
    m = _arr("m", m, np.float32, shape=(n,), writable=True)
    v = _arr("v", v, np.float32, shape=(n,), writable=True)
    g = _arr("g", g, np.float32, shape=(n,))
    if step < 1:
        raise ValueError(f"adamw: step must be >= 1, got {step}")

    def run(lo: int, hi: int) -> None:
        lib.anet_adamw(
            _f32(p[lo:hi]),
            _f32(m[lo:hi]),
            _f32(v[lo:hi]),
            _f32(g[lo:hi]),
            hi - lo,
            lr,
            beta1,
            beta2,
            eps,
            wd,
            grad_scale,
            step,
        )

    _run_chunks(run, n, threads)


def sumsq(x: np.ndarray, threads: int = 1) -> float:
    """Sum of squares of fp32 x (any shape), accumulated in double."""
    x = _arr("x", x, np.float32)
    xs = x.reshape(-1)

    def run(lo: int, hi: int) -> float:
        return float(lib.anet_sumsq(_f32(xs[lo:hi]), hi - lo))

    return float(sum(_run_chunks(run, xs.size, threads)))
