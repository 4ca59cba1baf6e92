"""ANE constraint checker: what the ANE rejects or silently mishandles (mil_reference.md §5)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from anetrain.mil.blob import read_blob
from anetrain.mil.errors import MilError, MilWarning
from anetrain.mil.ir import ITEMSIZE, BlobRef, Literal, Program, Ref, Statement, TensorType

MAX_SPATIAL = 16384  # last two axes (H, W): anec per-axis limit, EXT-7907 / RUST-13
MAX_CHANNEL = 65536  # C and N
MAX_CONTRACTION = 16384  # matmul K, conv C_in/groups·prod(K) (32000-input-channel conv rejected)
MAX_RANK = 5
MIN_IO_BYTES = 49152  # Orion: smaller surfaces fail at eval with 0x1d (warning only)
MIN_IO_CHANNELS = 64  # upstream.md §2.5/§9: >= 64 channels worked, a 4-channel kernel did not
MAX_BLOBS = 15  # Orion: ≤ 16 BLOBFILE consts, 15 with an inline scalar (warning)
ALIGN_W = 64  # keep I/O widths multiples of 64 fp16 elements (upstream.md §2.5)
ALIGN_K = 32  # runtime-weight matmul inner dim multiple of 32, else zeros on M1 (MDX-47)
LAST_AXIS_BYTES = 64  # the ANE pads every tensor's last axis to 64 bytes (§5 #20, APPLE-ART)
DECOMPOSE = {"gelu": "tanh form", "rsqrt": "pow(x, -0.5)", "silu": "x·sigmoid(x)"}


@dataclass(frozen=True)
class Issue:
    severity: str  # "E" error, "W" warning
    rule: str
    where: str  # "line N: op 'name'" or "program"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} [{self.rule}]"


def _dims(t: TensorType) -> list[str]:
    """Per-axis limits, rank-4 = NCHW and rank-5 = NDCHW (mil_reference.md §5 #1)."""
    s, r, bad = t.shape, t.rank, []
    for i in range(max(0, r - 2), r):
        if s[i] > MAX_SPATIAL:
            bad.append(f"dim {i} = {s[i]} > {MAX_SPATIAL}")
    lim = {r - 3: MAX_CHANNEL, r - 4: MAX_CHANNEL if r == 4 else MAX_SPATIAL, r - 5: MAX_CHANNEL}
    for i, m in lim.items():
        if 0 <= i < r - 2 and s[i] > m:
            bad.append(f"dim {i} = {s[i]} > {m}")
    return bad


def check_program(
    prog: Program, weights: dict[str, bytes] | None = None
) -> tuple[list[Issue], dict]:
    """All issues of a type-checked program, plus the decoded BLOBFILE tensors by (path, offset)."""
    out: list[Issue] = []
    blobs: dict[tuple[str, int], np.ndarray] = {}

    def add(sev: str, rule: str, where: str, msg: str) -> None:
        out.append(Issue(sev, rule, where, msg))

    if list(prog.functions) != ["main"]:
        add("E", "one-function", "program",
            f"expected one function 'main', got {list(prog.functions)}")  # fmt: skip
    f = next(iter(prog.functions.values()))
    fw = f"line {f.line}: func {f.name}"
    env = _check_inputs(f, fw, add)  # name -> type of every tensor seen so far
    cvals: dict[str, object] = {}  # inline const name -> value
    consts: set[str] = set()  # every const's name (inline and BLOBFILE)
    n_blob, io = 0, [(n, t) for t, n in f.params if isinstance(t, TensorType)]
    for s in f.stmts:
        n_blob += _check_statement(s, env, cvals, consts, weights, blobs, add)
    for o in f.outputs:
        t = env.get(o)
        if t is not None:
            io.append((o, t))
            if t.dtype != "fp16":
                add("E", "io-type", fw,
                    f"output {o!r} is {t.dtype}; the training surfaces are fp16")  # fmt: skip
    if n_blob > MAX_BLOBS:
        add("W", "blob-count", fw, f"{n_blob} BLOBFILE constants > {MAX_BLOBS}")
    _check_io_sizes(io, fw, add)
    if weights is not None:
        used = {s.attrs["val"].value.path for s in f.stmts  # type: ignore[union-attr]
                if s.op == "const" and isinstance(s.attrs["val"].value, BlobRef)}  # fmt: skip
        for k in sorted(set(weights) - used):
            add("W", "unused-weight", fw, f"weight {k!r} is not referenced by any BLOBFILE")
    return out, blobs


def _check_inputs(f, fw: str, add) -> dict[str, TensorType]:
    """The I/O contract (rules 4, 5, 6, 21, 22) on the function's signature; returns the
    environment of its tensor inputs."""
    if len(f.params) != 1:
        add("E", "single-input", fw, f"{len(f.params)} inputs; the ANE takes exactly one (0x1d)")
    if len(f.outputs) != 1:
        add("E", "single-output", fw, f"{len(f.outputs)} outputs; pack them with concat(axis=1)")
    env: dict[str, TensorType] = {}
    for t, n in f.params:
        if not isinstance(t, TensorType) or t.dtype != "fp16" or t.rank != 4:
            add("E", "io-type", fw, f"input {n!r} is {t}; expected tensor<fp16, [1, C, H, W]>")
        else:
            env[n] = t
            for b in _dims(t):  # the packed input too: weight columns widen it (§7.2 #3)
                add("E", "dim-limit", fw, f"input {n!r} {list(t.shape)}: {b}")
            _check_last_axis(f"input {n!r}", t, fw, add)
    return env


def _check_last_axis(what: str, t: TensorType, where: str, add) -> None:
    """Rule 20 (a warning: the program compiles and computes correctly, it only costs memory
    and bandwidth): a last axis under 64 bytes is padded to 64, e.g. RoPE pairs [.., 2] in fp16
    take 16x their size."""
    if t.rank == 0:
        return
    row = t.shape[-1] * ITEMSIZE.get(t.dtype, 1)
    if row < LAST_AXIS_BYTES:
        add("W", "last-axis", where, f"{what} {list(t.shape)}: last axis of {row} bytes is padded "
            f"to {LAST_AXIS_BYTES} ({LAST_AXIS_BYTES / row:.0f}x its size)")  # fmt: skip


def _check_statement(s, env: dict, cvals: dict, consts: set, weights, blobs: dict, add) -> int:
    """Rules on one statement (its results' ranks and dims, consts and blobs, literals, the op's
    own rules); returns 1 for a BLOBFILE const, else 0."""
    w = s.where()
    # inline consts (shapes, perms, axes, scalars) are parameters, not tensors the ANE holds
    inline = s.op == "const" and not isinstance(s.attrs["val"].value, BlobRef)
    for t, n in s.results:
        if isinstance(t, TensorType):
            env[n] = t
            if t.rank > MAX_RANK:
                add("E", "rank", w, f"{n!r} has rank {t.rank} > {MAX_RANK}")
            for b in _dims(t):
                add("E", "dim-limit", w, f"{n!r} {list(t.shape)}: {b}")
            if not inline:
                _check_last_axis(repr(n), t, w, add)
    if s.op == "const":
        consts.add(s.results[0][1])
        v = s.attrs["val"]
        if isinstance(v.value, BlobRef):
            _check_blob(s, v, weights, blobs, add)
            return 1
        cvals[s.results[0][1]] = v.value
        return 0
    if "name" not in s.attrs:
        add("W", "op-name", w, "op has no [name=string(...)] attribute")
    for k, b in s.args.items():
        for e in b if isinstance(b, tuple) else (b,):
            if isinstance(e, Literal):
                if isinstance(e.type, TensorType) and e.type.dtype == "bool":
                    add("E", "inline-bool", w, f"inline bool {k}=...; bind it to a named const")
                else:
                    add("W", "inline-literal", w, f"inline literal for {k}; use a named const")
    _op_rules(s, env, cvals, consts, add)
    if s.op in DECOMPOSE:
        add("W", "decompose", w,
            f"{s.op} is reported to fail in ANECCompile; use {DECOMPOSE[s.op]}")  # fmt: skip
    return 0


def _check_io_sizes(io: list, fw: str, add) -> None:
    """Size warnings on every I/O tensor: bytes, channels, width alignment."""
    for n, t in io:
        if t.nbytes < MIN_IO_BYTES:
            add("W", "io-min-bytes", fw, f"I/O tensor {n!r} is {t.nbytes} bytes < {MIN_IO_BYTES}")
        if t.rank == 4 and t.shape[1] < MIN_IO_CHANNELS:
            add("W", "io-min-channels", fw,
                f"I/O tensor {n!r} has {t.shape[1]} channels < {MIN_IO_CHANNELS}")  # fmt: skip
        if t.rank == 4 and t.shape[-1] % ALIGN_W:
            add("W", "io-width", fw,
                f"I/O tensor {n!r} width {t.shape[-1]} is not a multiple of {ALIGN_W}")  # fmt: skip


def _op_rules(s: Statement, env: dict[str, TensorType], cvals: dict, consts: set[str],
              add) -> None:  # fmt: skip
    w = s.where()

    def t(k: str) -> TensorType | None:
        b = s.args.get(k)
        return env.get(b.name) if isinstance(b, Ref) else None

    if s.op == "concat" and "interleave" not in s.args:
        add("E", "concat-interleave", w, "concat without an explicit interleave const")
    if s.op == "scaled_dot_product_attention" and "attn_mask" in s.args:
        add(
            "E", "sdpa-mask", w, "attn_mask is silently ignored on the ANE; decompose the attention"
        )
    if s.op in ("conv", "linear"):  # upstream.md §9, mil_reference.md §2.6
        wt = s.args.get("weight")
        if isinstance(wt, Ref) and wt.name not in consts:
            add("E", "const-weight", w, f"{s.op} weight {wt.name!r} is computed, not a const; the "
                "ANE takes runtime weights only through matmul")  # fmt: skip
    if s.op == "conv":
        if "bias" in s.args:
            add(
                "E",
                "conv-bias",
                w,
                "conv(bias=...) is rejected by the ANE frontend; add it separately",
            )
        x, wt = t("x"), t("weight")
        if x is not None and wt is not None and wt.rank >= 2:
            k = wt.shape[1] * int(np.prod(wt.shape[2:], dtype=np.int64))
            if k > MAX_CONTRACTION:
                add("E", "contraction", w, f"conv contracts over {k} > {MAX_CONTRACTION} inputs")
    if s.op == "matmul":
        x = t("x")
        if x is not None and x.rank >= 1:
            tx = s.args.get("transpose_x")
            flip = isinstance(tx, Ref) and bool(
                np.asarray(cvals.get(tx.name, False)).reshape(-1)[0]
            )
            k = x.shape[-2] if (flip and x.rank >= 2) else x.shape[-1]
            if k > MAX_CONTRACTION:
                add("E", "contraction", w, f"matmul contracts over {k} > {MAX_CONTRACTION}")
            elif k % ALIGN_K:
                add(
                    "W",
                    "matmul-k",
                    w,
                    f"matmul inner dim {k} is not a multiple of {ALIGN_K} (M1: zeros)",
                )


def _check_blob(s: Statement, v: Literal, weights, blobs, add) -> None:
    ref: BlobRef = v.value  # type: ignore[assignment]
    t: TensorType = v.type  # type: ignore[assignment]
    if weights is None:
        return
    if ref.path not in weights:
        add("E", "blob", s.where(), f"BLOBFILE {ref.path!r} is not in the weights dictionary")
        return
    try:
        blobs[(ref.path, ref.offset)] = read_blob(weights[ref.path], ref.offset, t.dtype, t.shape,
                                                  path=ref.path)  # fmt: skip
    except MilError as e:
        add("E", "blob", s.where(), str(e))


def enforce(issues: list[Issue], strict: bool = False) -> None:
    """Raise MilError listing every error (and, with strict, every warning); warn the rest."""
    errs = [i for i in issues if i.severity == "E" or strict]
    if errs:
        raise MilError("ANE constraint violation: " + "; ".join(str(i) for i in errs))
    for i in issues:
        warnings.warn(str(i), MilWarning, stacklevel=3)
