"""The ten dynamic-weight training kernels (upstream.md §5.4): MIL text plus surface layouts.

Every kernel has one fp16 input surface [1, C, 1, W] and one fp16 output surface [1, C, 1, S],
channel-first: element (c, s) at c·W + s (upstream.md §2.3). A `Layout` names each packed part
(channel range × spatial range); the packers in backends/mil.py use exactly these objects.
S = seq_len, D = dim, Q = q_dim, KV = kv_dim, F = hidden_dim, H = n_heads, HD = head_dim,
g = kv_group. Weights are llama2.c W[out, in]. `T` below = the surface holds Wᵀ (the packer
transposes the fp32 W[out, in]); `raw` = the surface holds W as is (upstream.md §5.3: the
dyn-matmul computes Mᵀ·x, so forward kernels stage Wᵀ and backward kernels raw W). `bcast` = a
norm weight w [HD] repeated along the segment's S columns (Qwen3's q/k norm, see _head_rmsnorm).

kernel      input segments, ch x sp (T / raw staging)        output segments (channels)
sdpaFwd     xnorm DxS, wq_t DxQ T, wk_t DxKV T, wv_t DxKV T   attn Q, q_rope Q, k_rope KV, v KV
            qk_norm: + q_norm, k_norm HDxS bcast              + q_pre Q, k_pre KV
woFwd       attn QxS, wo_t QxD T                             o D
ffnFused    x2norm DxS, w1_t DxF T, w3_t DxF T, w2 DxF raw   ffn D, h1 F, h3 F, gate F
ffnBwdW2t   dffn DxS, w2 DxF raw                             dgate F
ffnBwdW13t  dh1 FxS, dh3 FxS, w1 FxD raw, w3 FxD raw         dx D
wotBwd      dx2 DxS, wo DxQ raw                              dattn Q
sdpaBwd1    q_rope, k_tiled, v_tiled, dattn: QxS on ch       dv_full Q, P H·S, dP H·S
sdpaBwd2    P H·SxS, dP H·SxS, q_rope QxS, k_tiled QxS       dq Q, dk_full Q
qBwd        dq QxS, wq QxD raw                               dx D
kvBwd       dk KVxS, dv KVxS, wk KVxD raw, wv KVxD raw       dx D

P/dP channel h·S + t = query t, spatial = key. q_rope/k_rope are the roped projections; dq and
dk_full are gradients w.r.t. the roped q and k (the CPU applies RoPE' and the GQA reduction).

Deviations from upstream's MIL (mil_dynamic.h @d91c984), each on purpose:
1. No DeepNet α: ffnFused returns the FFN branch W2·(silu(W1x)⊙W3x) and takes no residual x2;
   the CPU keeps the residual stream in fp32 (exact Llama-2 math, no per-layer fp16 rounding).
2. sdpaFwd drops the xnorm pass-through output: the CPU already holds xnorm in fp32 and upstream
   never reads it back; dropping it saves D·S·2 bytes per evaluation.
3. GQA without tiling: query heads are grouped as [1, KV, g·S, HD] by a reshape (h = kv·g + r),
   so query head h attends with kv head h // g (llama2.c), matching the CPU-tiled backward. The
   causal mask blob is [1, 1, g·S, S] (g copies). Upstream tiles K/V with concat(interleave=false),
   i.e. h mod KV, inconsistent with its own backward (upstream.md §8.2-2). MHA: as upstream.
4. fp16 scalars are written as exact C99 hex floats (`fp16(0x1p-2)`), as coremlc prints them and as
   maderix's int8 benchmark compiled them, instead of `%f` text (mil_reference.md §3.6).
5. The final op of each kernel is named after the kernel (`"woFwd_out"`), so kernels with identical
   math (woFwd/wotBwd/qBwd for stories) never share a hexStringIdentifier dir (upstream.md §1.8).
6. Non-tensor parameters are deduplicated named consts (one `perm` const reused); arguments are
   printed in alphabetical order as coremlc does (order is not significant, mil_reference.md §1.3).
7. RoPE runs channel-first on [1, nh, HD, S] before the heads are transposed for the attention,
   pairs side by side along S (_rope), not on upstream's [1, nh, S·HD/2, 2] pairs: the ANE pads
   every last axis to 64 bytes (16x for those); the rotation's signs are in the sin table, so
   there is no ·(−1) op. q_rope and k_rope leave by a reshape, without transposing back.
8. sdpaBwd2 broadcasts rowsum(P⊙dP) with an exact matmul (_row_sums), not from a [1, H, S, 1]
   keep_dims sum: no tensor in any kernel has a last axis under 64 bytes for the ANE's sizes.
9. Qwen3's q/k norm (upstream has none) runs channel-first on [1, nh, HD, S] with its weights
   staged along S (no [.., 1] tensor), and scales each head column by its max |x| before squaring
   (_head_rmsnorm), so that the fp16 squares neither overflow nor flush to zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anetrain import native
from anetrain.config import ModelConfig
from anetrain.mil.blob import write_blob
from anetrain.mil.builder import Builder, Var
from anetrain.mil.check import ALIGN_K, ALIGN_W, check_program
from anetrain.mil.errors import MilError
from anetrain.mil.ir import Program, format_program
from anetrain.mil.parse import parse
from anetrain.rope import model_rope_tables

MASK_VALUE = -65504.0  # most negative finite fp16, not -inf (upstream.md §5.6)
ALIGN_C = 32  # surface channels a multiple of 32 (upstream.md §2.5); widths: ALIGN_W (64)
# The ten kernels by name. The names are data, not Python identifiers: upstream's MIL program names
# (camelCase), which also name each program's final op, the golden files under tests/golden and
# every per-kernel table (BUILDERS, REFERENCE, MilKernels' surfaces); the Python functions that
# build or run them are snake_case (sdpa_fwd builds "sdpaFwd").
KERNELS = ("sdpaFwd", "woFwd", "ffnFused", "ffnBwdW2t", "ffnBwdW13t", "wotBwd", "sdpaBwd1",
           "sdpaBwd2", "qBwd", "kvBwd")  # fmt: skip
WEIGHT = "@model_path/weights/{}.bin"

# ----------------------------------------------------------------------------
# layouts


@dataclass(frozen=True)
class Segment:
    """One packed part of a surface: channels [c0, c0+nch) × spatial [s0, s0+width)."""

    name: str
    c0: int
    nch: int
    s0: int
    width: int
    stage: str = ""  # weights: "T" = surface holds Wᵀ (packer transposes), "raw" = holds W,
    # "bcast" = holds a vector weight w [nch] in every column (w[c] along row c)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nch, self.width)

    @property
    def weight(self) -> str:
        """The LayerParams weight staged here ("wq_t" holds Wqᵀ -> "wq"); "" for activations."""
        return self.name.removesuffix("_t") if self.stage else ""

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """That weight's W[out, in] shape: the segment's transposed for "T", its own for "raw";
        [nch] for "bcast"."""
        if self.stage == "bcast":
            return (self.nch,)
        return (self.width, self.nch) if self.stage == "T" else self.shape


@dataclass(frozen=True)
class Layout:
    """A [1, C, 1, W] fp16 surface and its named, non-overlapping segments (in packing order)."""

    C: int
    W: int
    segments: tuple[Segment, ...]
    _index: dict = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {s.name: s for s in self.segments})
        if len(self._index) != len(self.segments):
            raise MilError("layout: duplicate segment names")
        for s in self.segments:
            if s.c0 < 0 or s.s0 < 0 or s.nch < 1 or s.width < 1 or s.c0 + s.nch > self.C \
                    or s.s0 + s.width > self.W:  # fmt: skip
                raise MilError(f"layout: segment {s.name} outside [{self.C}, {self.W}]")
        for i, a in enumerate(self.segments):
            for b in self.segments[i + 1 :]:
                if a.c0 < b.c0 + b.nch and b.c0 < a.c0 + a.nch and a.s0 < b.s0 + b.width \
                        and b.s0 < a.s0 + a.width:  # fmt: skip
                    raise MilError(f"layout: segments {a.name} and {b.name} overlap")

    def __getitem__(self, name: str) -> Segment:
        return self._index[name]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, self.C, 1, self.W)

    @property
    def nbytes(self) -> int:
        return self.C * self.W * 2

    def misaligned(self) -> list[str]:
        """Every width/offset the ANE wants aligned but is not (empty = ANE-friendly)."""
        bad = []
        if self.W % ALIGN_W:
            bad.append(f"surface width {self.W} % {ALIGN_W} != 0")
        if self.C % ALIGN_C:
            bad.append(f"surface channels {self.C} % {ALIGN_C} != 0")
        for s in self.segments:
            if s.s0 % ALIGN_W or s.width % ALIGN_W:
                bad.append(f"{s.name}: spatial [{s.s0}, {s.s0 + s.width}) not {ALIGN_W}-aligned")
        return bad

    def pack(self, parts: dict[str, np.ndarray], dtype=np.float16) -> np.ndarray:
        """Reference packer (tests): parts[name] is [nch, width] as staged -> [C, W] array."""
        out = np.zeros((self.C, self.W), dtype=dtype)
        for s in self.segments:
            a = np.asarray(parts[s.name])
            if a.shape != s.shape:
                raise MilError(f"layout: {s.name} is {a.shape}, expected {s.shape}")
            out[s.c0 : s.c0 + s.nch, s.s0 : s.s0 + s.width] = a
        return out

    def unpack(self, buf: np.ndarray) -> dict[str, np.ndarray]:
        """[C, W] (or the flat surface) -> {name: [nch, width] view}."""
        b = np.asarray(buf).reshape(self.C, self.W)
        return {s.name: b[s.c0 : s.c0 + s.nch, s.s0 : s.s0 + s.width] for s in self.segments}


def _spatial(C: int, parts: list[tuple[str, int, str]]) -> Layout:
    """Segments side by side along W, all C channels (inputs of the weight-bearing kernels)."""
    segs, s0 = [], 0
    for name, w, stage in parts:
        segs.append(Segment(name, 0, C, s0, w, stage))
        s0 += w
    return Layout(C, s0, tuple(segs))


def _channels(W: int, parts: list[tuple[str, int]]) -> Layout:
    """Segments stacked along C, full width W (outputs, and the weight-free inputs)."""
    segs, c0 = [], 0
    for name, c in parts:
        segs.append(Segment(name, c0, c, 0, W))
        c0 += c
    return Layout(c0, W, tuple(segs))


@dataclass(frozen=True)
class KernelSpec:
    name: str
    mil: str  # the full program text
    weights: dict[str, bytes]  # BLOBFILE path as written in the MIL -> blob file bytes
    inp: Layout
    out: Layout
    graph: Program | None = field(default=None, compare=False, repr=False)  # builder's graph

    def misaligned(self) -> list[str]:
        return [f"{self.name} input: {m}" for m in self.inp.misaligned()] + [
            f"{self.name} output: {m}" for m in self.out.misaligned()]  # fmt: skip


# ----------------------------------------------------------------------------
# MIL building blocks


class _K:
    """Builder plus the idioms of upstream.md §4.4 for one kernel."""

    def __init__(self, name: str, cfg: ModelConfig, inp: Layout):
        self.name, self.cfg, self.inp = name, cfg, inp
        self.b = Builder()
        self.x = self.b.input("x", inp.shape)  # [1, C, 1, W] fp16
        self.weights: dict[str, bytes] = {}

    def seg(self, seg: str, tag: str) -> Var:
        """The input's segment `seg`, where the layout puts it: [1, C, 1, W]."""
        s = self.inp[seg]
        return self.b.slice(f"{tag}_s", self.x, [0, s.c0, 0, s.s0], [1, s.nch, 1, s.width])

    def act_t(self, seg: str, tag: str) -> Var:
        """Activation segment [C, S] -> [1, 1, S, C] (the dyn-matmul's left operand)."""
        s, b = self.inp[seg], self.b
        a = b.reshape(f"{tag}_r", self.seg(seg, tag), [1, 1, s.nch, s.width])  # [1,1,C,S]
        return b.transpose(f"{tag}_t", a)  # [1,1,S,C]

    def block(self, seg: str, tag: str) -> Var:
        """Weight segment [C, N] -> [1, 1, C, N]."""
        s = self.inp[seg]
        return self.b.reshape(f"{tag}_r", self.seg(seg, tag), [1, 1, s.nch, s.width])  # [1,1,C,N]

    def heads(self, seg: str, nh: int, tag: str) -> Var:
        """Channel segment [nh·HD, S] -> [1, nh, S, HD]."""
        s, b, hd = self.inp[seg], self.b, self.cfg.head_dim
        a = b.reshape(f"{tag}_r", self.seg(seg, tag), [1, nh, hd, s.width])  # [1,nh,HD,S]
        return b.transpose(f"{tag}_h", a)  # [1,nh,S,HD]

    def to_chan(self, y: Var, tag: str) -> Var:
        """[1, 1, S, N] -> [1, N, 1, S]."""
        t = self.b.transpose(f"{tag}_t", y)  # [1,1,N,S]
        return self.b.reshape(f"{tag}_c", t, [1, t.shape[2], 1, t.shape[3]])  # [1,N,1,S]

    def heads_to_chan(self, y: Var, tag: str) -> Var:
        """[1, nh, S, HD] -> [1, nh·HD, 1, S] (channel h·HD + d)."""
        t = self.b.transpose(f"{tag}_t", y)  # [1,nh,HD,S]
        return self.b.reshape(f"{tag}_c", t, [1, t.shape[1] * t.shape[2], 1, t.shape[3]])

    def blob(self, name: str, arr: np.ndarray) -> Var:
        path = WEIGHT.format(name)
        half = native.f32_to_f16(np.ascontiguousarray(arr, dtype=np.float32))  # the one fp16 path
        self.weights[path] = write_blob(half.view(np.float16))
        return self.b.blob(name, arr.shape, path)

    def finish(self, out: Var, outl: Layout) -> KernelSpec:
        if out.shape != outl.shape:
            raise MilError(f"{self.name}: output {out.shape} does not match layout {outl.shape}")
        prog = self.b.program(out)
        return KernelSpec(self.name, format_program(prog), dict(self.weights), self.inp, outl, prog)

    def pack_out(self, parts: list[Var], outl: Layout) -> KernelSpec:
        """concat(axis=1) of the output taps; the final op is named after the kernel, so that
        kernels with the same graph (woFwd, wotBwd, qBwd) still get distinct MIL (§1.8).

        A one-output kernel ends in its last reshape, as upstream's do (upstream.md §4.4): a
        one-value concat compiles in program(1.3) but is reported invalid in older targets.
        """
        if len(parts) == 1:
            self.b.name_op(parts[0], f"{self.name}_out")
            return self.finish(parts[0], outl)
        out = self.b.concat("out", parts, axis=1, interleave=False, op_name=f"{self.name}_out")
        return self.finish(out, outl)


def _dyn(k: _K, act: str, w: str, tag: str) -> Var:
    """y = Mᵀ·act as [1, 1, S, OC] (upstream.md §4.4 dynamic matmul, M = weight segment)."""
    return k.b.matmul(f"{tag}_mm", k.act_t(act, f"{tag}_a"), k.block(w, f"{tag}_w"))


def _causal(S: int, reps: int = 1) -> np.ndarray:
    m = np.where(
        np.arange(S)[None, :] <= np.arange(S)[:, None], 0.0, MASK_VALUE
    )  # [S(query), S(key)]
    return np.tile(m, (reps, 1)).reshape(1, 1, reps * S, S)  # [1,1,reps·S,S]


def _rope_tables(cfg: ModelConfig, S: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and the signed sin of llama2.c's interleaved-pair RoPE, channel-first [1, 1, HD, S]:
    row 2i and 2i+1 hold pair i's cos θ; the sin rows hold −sin θ (2i) and +sin θ (2i+1), the
    rotation's signs, so that the kernel only swaps the pair's rows (see _rope)."""
    cos, sin = model_rope_tables(cfg, S)  # [S, HD/2] each
    sign = np.tile(np.array([-1.0, 1.0], np.float32), cos.shape[1])  # [HD]
    c = np.repeat(cos, 2, axis=1).T  # [HD, S]
    s = np.repeat(sin, 2, axis=1).T * sign[:, None]  # [HD, S]
    return c.reshape(1, 1, *c.shape), s.reshape(1, 1, *s.shape)


def _rope(k: _K, h: Var, cos: Var, sin: Var, tag: str) -> Var:
    """llama2.c interleaved-pair RoPE on channel-first heads [1, nh, HD, S] (row 2i, 2i+1 of a
    head = pair i): out[2i] = x[2i]·cos − x[2i+1]·sin, out[2i+1] = x[2i+1]·cos + x[2i]·sin.

    The reshape to [1, nh·HD/2, 1, 2S] lays each pair's two rows side by side along the last axis
    (row 2i in [0, S), row 2i+1 in [S, 2S)), so the swap is a slice and a concat along that axis
    and every tensor keeps S as its last axis: the ANE pads the last axis to 64 bytes, which made
    upstream's [1, nh, S·HD/2, 2] pairs 16x their size (mil_reference.md §5 #20). The rotation's
    signs live in the sin table (_rope_tables), so x·cos + swap(x)·sin is the whole rotation.
    """
    b = k.b
    _, nh, hd, S = h.shape
    n = nh * hd // 2
    p = b.reshape(f"{tag}_p", h, [1, n, 1, 2 * S])  # [1,n,1,2S] (x[2i] | x[2i+1]) per pair
    ev = b.slice(f"{tag}_e", p, [0, 0, 0, 0], [1, n, 1, S])  # [1,n,1,S] x[2i]
    od = b.slice(f"{tag}_o", p, [0, 0, 0, S], [1, n, 1, S])  # [1,n,1,S] x[2i+1]
    sw = b.concat(f"{tag}_sw", [od, ev], axis=3)  # [1,n,1,2S] (x[2i+1] | x[2i])
    sw = b.reshape(f"{tag}_swh", sw, [1, nh, hd, S])  # [1,nh,HD,S]
    return b.op("add", f"{tag}_y", x=b.op("mul", f"{tag}_c", x=h, y=cos),
                y=b.op("mul", f"{tag}_sn", x=sw, y=sin))  # fmt: skip


def _head_rmsnorm(k: _K, x: Var, seg: str, eps: float, tag: str) -> Var:
    """Qwen3's q/k norm on channel-first heads x [1, nh, HD, S]: every column of every head
    (one head of one token) times rsqrt(mean of its squares + eps), times the weight w [HD] that
    segment `seg` holds in each of its S columns ("bcast" staging: no [.., 1] tensor).

    fp16 squares overflow above |x| = 256 and flush to zero below 2^-7, so each column is first
    divided by its max |x| (floored at 2^-14): y = x/m lies in [-1, 1], mean(y²) in [1/HD, 1]
    (the reduction accumulates in fp32 on the ANE and in the simulator, mil_reference.md §3.3),
    and x·rsqrt(mean(x²) + eps) = y·(mean(y²) + (√eps/m)²)^-½ (pow: rsqrt is reported not to
    compile, mil_reference.md §5 #12).
    """
    b = k.b
    _, nh, hd, S = x.shape
    w = b.reshape(f"{tag}_w", k.seg(seg, f"{tag}_w"), [1, 1, hd, S])  # [1,1,HD,S]
    hi = b.op("reduce_max", f"{tag}_hi", x=x, axes=[2], keep_dims=True)  # [1,nh,1,S] max x
    neg = b.op("mul", f"{tag}_ng", x=x, y=-1.0)
    lo = b.op("reduce_max", f"{tag}_lo", x=neg, axes=[2], keep_dims=True)  # [1,nh,1,S] max -x
    m = b.op("maximum", f"{tag}_m", x=b.op("maximum", f"{tag}_a", x=hi, y=lo), y=2.0**-14)
    y = b.op("real_div", f"{tag}_y", x=x, y=m)  # [1,nh,HD,S] in [-1, 1]
    ms = b.op("reduce_mean", f"{tag}_ms", x=b.op("mul", f"{tag}_sq", x=y, y=y), axes=[2],
              keep_dims=True)  # [1,nh,1,S]  # fmt: skip
    t = b.op("real_div", f"{tag}_t", x=float(np.sqrt(eps)), y=m)  # √eps/m: [1,nh,1,S]
    d = b.op("add", f"{tag}_d", x=ms, y=b.op("mul", f"{tag}_t2", x=t, y=t))
    r = b.op("pow", f"{tag}_r", x=d, y=-0.5)  # [1,nh,1,S]
    return b.op("mul", f"{tag}_o", x=b.op("mul", f"{tag}_yr", x=y, y=r), y=w)  # [1,nh,HD,S]


def _row_sums(k: _K, x: Var) -> Var:
    """[1, H, S, S] -> [1, H, S, S] whose every column is the row sum of x, without the
    [1, H, S, 1] keep_dims sum the ANE would pad 32x (mil_reference.md §5 #20).

    The sum leaves as [1, H, S] (last axis S); e0 [1, 1, 32, S] is a one in row 0 and zeros
    below. rs ⊙ e0 puts the sums in row 0 of a [1, H, 32, S] block, and (rs ⊙ e0)ᵀ·e0 copies
    them along every column: each output is rs·1 plus zeros, exactly the sum, so the result
    equals a broadcast of the keep_dims sum bit for bit (an infinite sum gives NaN instead of
    inf: an overflow either way). 32 rows, not 1: a runtime matmul's inner dimension is kept a
    multiple of 32 (M1 returns zeros otherwise, check.ALIGN_K).
    """
    b = k.b
    _, H, S, _ = x.shape
    e0 = np.zeros((1, 1, ALIGN_K, S), np.float32)
    e0[0, 0, 0] = 1.0
    e = k.blob("e0", e0)  # [1,1,32,S]
    rs = b.op("reduce_sum", "rs", x=x, axes=[-1], keep_dims=False)  # [1,H,S]
    rs = b.reshape("rs_r", rs, [1, H, 1, S])  # [1,H,1,S]
    blk = b.op("mul", "rs_b", x=rs, y=e)  # [1,H,32,S]: row 0 = rs, the rest 0
    return b.matmul("rs_m", blk, e, tx=True)  # [1,H,S,S]: (t, k) = rs[t]


def _scale(cfg: ModelConfig) -> float:
    return float(1.0 / np.sqrt(cfg.head_dim))


# ----------------------------------------------------------------------------
# the ten kernels


def _sdpa_fwd_layout(cfg: ModelConfig) -> Layout:
    """xnorm and Wqᵀ, Wkᵀ, Wvᵀ side by side; with qk_norm also the q and k norm weights, each
    repeated along S: stacked in one S-wide band when 2·HD ≤ D, else side by side."""
    S, D, Q, KV, HD = cfg.seq_len, cfg.dim, cfg.q_dim, cfg.kv_dim, cfg.head_dim
    base = _spatial(D, [("xnorm", S, ""), ("wq_t", Q, "T"), ("wk_t", KV, "T"), ("wv_t", KV, "T")])
    if not cfg.qk_norm:
        return base
    s0, stack = base.W, 2 * HD <= D
    norms = (Segment("q_norm", 0, HD, s0, S, "bcast"),
             Segment("k_norm", HD if stack else 0, HD, s0 if stack else s0 + S, S, "bcast"))
    return Layout(D, s0 + (S if stack else 2 * S), base.segments + norms)  # fmt: skip


def sdpa_fwd(cfg: ModelConfig) -> KernelSpec:
    S, Q, KV, H, NK, HD, g = (cfg.seq_len, cfg.q_dim, cfg.kv_dim, cfg.n_heads, cfg.n_kv_heads,
                              cfg.head_dim, cfg.kv_group)  # fmt: skip
    k = _K("sdpaFwd", cfg, _sdpa_fwd_layout(cfg))
    b = k.b
    cos, sin = _rope_tables(cfg, S)
    cb, sb = k.blob("rope_cos", cos), k.blob("rope_sin", sin)  # [1,1,HD,S] each
    mask = k.blob("mask", _causal(S, g))  # [1,1,g·S,S]
    xt = k.act_t("xnorm", "xn")  # [1,1,S,D]
    proj = {}
    for nm in ("q", "k", "v"):
        w = k.block(f"w{nm}_t", f"w{nm}")  # [1,1,D,n]
        m = b.matmul(f"{nm}_mm", xt, w)  # [1,1,S,n]
        proj[nm] = b.transpose(f"{nm}_tT", m)  # [1,1,n,S]
    # (Qwen3's q/k norm and) RoPE channel-first, before the heads are transposed for the attention
    roped = {}
    for nm, nh in (("q", H), ("k", NK)):
        h = b.reshape(f"{nm}_r", proj[nm], [1, nh, HD, S])  # [1,nh,HD,S]
        if cfg.qk_norm:
            h = _head_rmsnorm(k, h, f"{nm}_norm", cfg.norm_eps, f"{nm}n")
        roped[nm] = _rope(k, h, cb, sb, f"{nm}rp")  # [1,nh,HD,S]
    qr, kr = roped["q"], roped["k"]
    q = b.transpose("q_h", qr)  # [1,H,S,HD]
    kk = b.transpose("k_h", kr)  # [1,KV,S,HD]
    v = b.transpose("v_h", b.reshape("v_r", proj["v"], [1, NK, HD, S]))  # [1,KV,S,HD]
    qg = q if g == 1 else b.reshape("q_g", q, [1, NK, g * S, HD])  # head h = kv·g + r
    sc = b.matmul("sc", qg, kk, ty=True)  # [1,KV,g·S,S]
    sc = b.op("mul", "sc_s", x=sc, y=_scale(cfg))
    sc = b.op("add", "sc_m", x=sc, y=mask)
    p = b.op("softmax", "p", x=sc, axis=-1)
    a = b.matmul("a", p, v)  # [1,KV,g·S,HD]
    if g > 1:
        a = b.reshape("a_h", a, [1, H, S, HD])
    outs = [k.heads_to_chan(a, "ao"), b.reshape("qo", qr, [1, Q, 1, S]),
            b.reshape("ko", kr, [1, KV, 1, S]), b.reshape("vo", proj["v"], [1, KV, 1, S])]
    chans = [("attn", Q), ("q_rope", Q), ("k_rope", KV), ("v", KV)]
    if cfg.qk_norm:  # the projections before the norm, for its backward on the host
        outs += [b.reshape("qpo", proj["q"], [1, Q, 1, S]),
                 b.reshape("kpo", proj["k"], [1, KV, 1, S])]  # fmt: skip
        chans += [("q_pre", Q), ("k_pre", KV)]
    return k.pack_out(outs, _channels(S, chans))


def _matmul_kernel(name: str, cfg: ModelConfig, C: int, act: str, wname: str, stage: str, N: int,
                   out: str) -> KernelSpec:  # fmt: skip
    k = _K(name, cfg, _spatial(C, [(act, cfg.seq_len, ""), (wname, N, stage)]))
    return k.pack_out(
        [k.to_chan(_dyn(k, act, wname, "y"), "yo")], _channels(cfg.seq_len, [(out, N)])
    )


def wo_fwd(cfg: ModelConfig) -> KernelSpec:
    return _matmul_kernel("woFwd", cfg, cfg.q_dim, "attn", "wo_t", "T", cfg.dim, "o")


def ffn_bwd_w2t(cfg: ModelConfig) -> KernelSpec:
    return _matmul_kernel("ffnBwdW2t", cfg, cfg.dim, "dffn", "w2", "raw", cfg.hidden_dim, "dgate")


def wot_bwd(cfg: ModelConfig) -> KernelSpec:
    return _matmul_kernel("wotBwd", cfg, cfg.dim, "dx2", "wo", "raw", cfg.q_dim, "dattn")


def q_bwd(cfg: ModelConfig) -> KernelSpec:
    return _matmul_kernel("qBwd", cfg, cfg.q_dim, "dq", "wq", "raw", cfg.dim, "dx")


def ffn_fused(cfg: ModelConfig) -> KernelSpec:
    S, D, F = cfg.seq_len, cfg.dim, cfg.hidden_dim
    k = _K("ffnFused", cfg, _spatial(D, [("x2norm", S, ""), ("w1_t", F, "T"), ("w3_t", F, "T"),
                                         ("w2", F, "raw")]))  # fmt: skip
    b = k.b
    xt = k.act_t("x2norm", "xn")  # [1,1,S,D]
    h1 = b.matmul("h1", xt, k.block("w1_t", "w1"))  # [1,1,S,F]
    h3 = b.matmul("h3", xt, k.block("w3_t", "w3"))  # [1,1,S,F]
    sg = b.op("sigmoid", "sg", x=h1)
    gate = b.op("mul", "gate", x=b.op("mul", "silu", x=h1, y=sg), y=h3)  # silu(h1)·h3
    w2t = b.transpose("w2_T", k.block("w2", "w2"))  # [1,1,F,D] = W2ᵀ (W2 staged raw, §5.3)
    f = b.matmul("ffn", gate, w2t)  # [1,1,S,D]
    outs = [k.to_chan(f, "fo"), k.to_chan(h1, "h1o"), k.to_chan(h3, "h3o"), k.to_chan(gate, "go")]
    return k.pack_out(outs, _channels(S, [("ffn", D), ("h1", F), ("h3", F), ("gate", F)]))


def _two_matmul_kernel(name: str, cfg: ModelConfig, C: int, acts: tuple[str, str],
                       ws: tuple[str, str]) -> KernelSpec:  # fmt: skip
    S, D = cfg.seq_len, cfg.dim
    k = _K(name, cfg, _spatial(C, [(acts[0], S, ""), (acts[1], S, ""), (ws[0], D, "raw"),
                                   (ws[1], D, "raw")]))  # fmt: skip
    y = k.b.op("add", "y", x=_dyn(k, acts[0], ws[0], "y0"), y=_dyn(k, acts[1], ws[1], "y1"))
    return k.pack_out([k.to_chan(y, "yo")], _channels(S, [("dx", D)]))


def ffn_bwd_w13t(cfg: ModelConfig) -> KernelSpec:
    return _two_matmul_kernel("ffnBwdW13t", cfg, cfg.hidden_dim, ("dh1", "dh3"), ("w1", "w3"))


def kv_bwd(cfg: ModelConfig) -> KernelSpec:
    return _two_matmul_kernel("kvBwd", cfg, cfg.kv_dim, ("dk", "dv"), ("wk", "wv"))


def sdpa_bwd1(cfg: ModelConfig) -> KernelSpec:
    S, Q, H = cfg.seq_len, cfg.q_dim, cfg.n_heads
    k = _K(
        "sdpaBwd1", cfg, _channels(S, [("q_rope", Q), ("k_tiled", Q), ("v_tiled", Q), ("dattn", Q)])
    )
    b = k.b
    mask = k.blob("mask", _causal(S))  # [1,1,S,S]
    q, kk = k.heads("q_rope", H, "q"), k.heads("k_tiled", H, "k")  # [1,H,S,HD]
    v, da = k.heads("v_tiled", H, "v"), k.heads("dattn", H, "da")
    sc = b.op("mul", "sc_s", x=b.matmul("sc", q, kk, ty=True), y=_scale(cfg))  # [1,H,S,S]
    p = b.op("softmax", "p", x=b.op("add", "sc_m", x=sc, y=mask), axis=-1)  # recomputed P
    dv = b.matmul("dv", p, da, tx=True)  # Pᵀ·dA [1,H,S,HD]
    dp = b.matmul("dp", da, v, ty=True)  # dA·Vᵀ [1,H,S,S]
    outs = [k.heads_to_chan(dv, "dvo"), b.reshape("po", p, [1, H * S, 1, S]),
            b.reshape("dpo", dp, [1, H * S, 1, S])]  # fmt: skip
    return k.pack_out(outs, _channels(S, [("dv_full", Q), ("P", H * S), ("dP", H * S)]))


def sdpa_bwd2(cfg: ModelConfig) -> KernelSpec:
    S, Q, H = cfg.seq_len, cfg.q_dim, cfg.n_heads
    k = _K(
        "sdpaBwd2", cfg, _channels(S, [("P", H * S), ("dP", H * S), ("q_rope", Q), ("k_tiled", Q)])
    )
    b = k.b
    p = b.reshape("p_r", k.seg("P", "p"), [1, H, S, S])  # [1,H·S,1,S] -> [1,H,S,S]
    dp = b.reshape("dp_r", k.seg("dP", "dp"), [1, H, S, S])
    q, kk = k.heads("q_rope", H, "q"), k.heads("k_tiled", H, "k")  # [1,H,S,HD]
    rs = _row_sums(k, b.op("mul", "pdp", x=p, y=dp))  # [1,H,S,S] rowsum(P⊙dP) in every column
    ds = b.op("mul", "ds0", x=p, y=b.op("sub", "dd", x=dp, y=rs))  # P⊙(dP − rowsum(P⊙dP))
    ds = b.op("mul", "ds", x=ds, y=_scale(cfg))  # [1,H,S,S]
    dq = b.matmul("dq", ds, kk)  # dS·K [1,H,S,HD]
    dk = b.matmul("dk", ds, q, tx=True)  # dSᵀ·Q [1,H,S,HD]
    outs = [k.heads_to_chan(dq, "dqo"), k.heads_to_chan(dk, "dko")]
    return k.pack_out(outs, _channels(S, [("dq", Q), ("dk_full", Q)]))


BUILDERS = {"sdpaFwd": sdpa_fwd, "woFwd": wo_fwd, "ffnFused": ffn_fused, "ffnBwdW2t": ffn_bwd_w2t,
            "ffnBwdW13t": ffn_bwd_w13t, "wotBwd": wot_bwd, "sdpaBwd1": sdpa_bwd1,
            "sdpaBwd2": sdpa_bwd2, "qBwd": q_bwd, "kvBwd": kv_bwd}  # fmt: skip


def build_specs(cfg: ModelConfig, *, strict: bool = False) -> dict[str, KernelSpec]:
    """The specifications of all ten kernels for `cfg` (MIL text, weights, surface layouts), keyed
    by upstream's names.

    strict=True (what the real ANE runtime asks for) raises MilError naming every surface width,
    channel count or segment offset that is not aligned (widths % 64, channels % 32); the
    simulator runs misaligned kernels (e.g. the `tiny` preset's hidden 176) and only warns.
    """
    specs = {n: BUILDERS[n](cfg) for n in KERNELS}
    if strict:  # the alignment only; limit_errors has the compiler's other refusals
        bad = [m for s in specs.values() for m in s.misaligned()]
        if bad:
            raise MilError("kernels not ANE-aligned for this config: " + "; ".join(bad))
    return specs


def limit_errors(specs: dict[str, KernelSpec]) -> list[str]:
    """Every error the constraint checker (mil/check.py) finds in these programs, one
    "<kernel> <what> [<rule>]" each: what the ANE compiler refuses besides misaligned surfaces
    (per-axis sizes, e.g. a packed input wider than 16384; matmul contraction; ...)."""
    out = []
    for name, spec in specs.items():
        issues, _ = check_program(parse(spec.mil), spec.weights)
        out += [f"{name} {i.message} [{i.rule}]" for i in issues if i.severity == "E"]
    return out
