"""LoRA: adapters A [r, in], B [out, r] in one flat fp32 buffer over frozen base weights."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from anetrain.config import ConfigError, ModelConfig
from anetrain.params import Params
from anetrain.params import layout as params_layout

# --lora-targets name (PEFT / Hugging Face module) -> the Params matrix it adapts
TARGETS = {"q": "wq", "k": "wk", "v": "wv", "o": "wo", "gate": "w1", "up": "w3", "down": "w2"}


@dataclass(frozen=True)
class LoraConfig:
    """Rank, scale alpha / rank, the adapted matrices and the last `layers` layers (0: all)."""

    rank: int
    alpha: float = 0.0  # 0: 2 * rank
    dropout: float = 0.0  # of each adapter's input, as PEFT's lora_dropout (cpu backend)
    targets: tuple[str, ...] = ("q", "v")
    layers: int = 0  # the last N layers; 0 = all

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"--lora-rank must be >= 1, got {self.rank}")
        if not self.alpha:
            object.__setattr__(self, "alpha", float(2 * self.rank))
        if self.alpha <= 0:
            raise ConfigError(f"--lora-alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"--lora-targets {','.join(self.targets)}: pick distinct names "
                              f"from {','.join(TARGETS)}")  # fmt: skip
        if self.layers < 0:
            raise ConfigError(f"--lora-layers must be >= 0, got {self.layers}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def layer_ids(self, cfg: ModelConfig) -> range:
        if self.layers > cfg.n_layers:
            raise ConfigError(f"--lora-layers {self.layers}: the model has {cfg.n_layers} layers")
        return range(cfg.n_layers - (self.layers or cfg.n_layers), cfg.n_layers)

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "targets": list(self.targets), "layers": self.layers}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> LoraConfig:
        """From a checkpoint header; ConfigError on a missing, unknown or ill-typed field."""
        if not isinstance(d, dict) or set(d) != {"rank", "alpha", "dropout", "targets", "layers"}:
            raise ConfigError(f"lora config must have rank, alpha, dropout, targets, layers: {d!r}")
        ints = all(isinstance(d[k], int) and not isinstance(d[k], bool) for k in ("rank", "layers"))
        nums = all(isinstance(d[k], (int, float)) and not isinstance(d[k], bool)
                   for k in ("alpha", "dropout"))  # fmt: skip
        names = isinstance(d["targets"], list) and all(isinstance(t, str) for t in d["targets"])
        if not (ints and nums and names):
            raise ConfigError(f"lora config has a field of the wrong type: {d!r}")
        return cls(d["rank"], float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]),
                   d["layers"])  # fmt: skip


def layout(cfg: ModelConfig, lc: LoraConfig) -> list[tuple[str, str, tuple[int, ...]]]:
    """(adapter name, base tensor name, shape) of every adapter in flat-buffer order:
    per adapted layer and target, `layers.{l}.{w}.lora_A` [r, in] then `...lora_B` [out, r]."""
    shapes = dict(params_layout(cfg))
    out = []
    for layer in lc.layer_ids(cfg):
        for t in lc.targets:
            base = f"layers.{layer}.{TARGETS[t]}"
            rows, cols = shapes[base]
            out += [(f"{base}.lora_A", base, (lc.rank, cols)),
                    (f"{base}.lora_B", base, (rows, lc.rank))]  # fmt: skip
    return out


def matrix_rows(cfg: ModelConfig) -> dict[str, int]:
    """The rows (outputs) of every layer matrix: "wq" -> q_dim, ..., "w2" -> dim."""
    return {name.split(".")[-1]: shape[0] for name, shape in params_layout(cfg)
            if name.startswith("layers.0.") and len(shape) == 2}  # fmt: skip


class LoraParams:
    """All adapters (or their gradients, or AdamW moments) in one flat fp32 buffer.

    Every adapter is a matrix, so the whole buffer is weight-decayed (`n_decay`), as torch's
    AdamW does with PEFT's default single parameter group.
    """

    def __init__(self, cfg: ModelConfig, lc: LoraConfig, flat: np.ndarray | None = None):
        self.cfg, self.lc = cfg, lc
        self.names = layout(cfg, lc)
        n = sum(int(np.prod(s)) for _, _, s in self.names)
        if flat is None:
            flat = np.zeros(n, dtype=np.float32)
        if flat.dtype != np.float32 or flat.shape != (n,) or not flat.flags.c_contiguous:
            raise ValueError(f"LoraParams: need a contiguous float32 buffer of {n} values")
        self.flat = flat  # [n]
        self.tensors: dict[str, np.ndarray] = {}
        off = 0
        for name, _, shape in self.names:
            size = int(np.prod(shape))
            self.tensors[name] = flat[off : off + size].reshape(shape)
            off += size
        self.n_decay = n
        self.rows = matrix_rows(cfg)  # "wq" -> q_dim, ...: the rows of each layer matrix

    def pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(base tensor name, A [r, in], B [out, r]) of every adapted matrix."""
        return [(base, self.tensors[f"{base}.lora_A"], self.tensors[f"{base}.lora_B"])
                for name, base, _ in self.names if name.endswith(".lora_A")]  # fmt: skip

    def in_block(self, layer: int, names: tuple[str, ...]
                 ) -> Iterator[tuple[str, np.ndarray, np.ndarray, slice]]:  # fmt: skip
        """(matrix, A, B, its rows) of every adapted matrix among `names`, the matrices of
        `layer` whose rows are stacked in that order (e.g. ("wq", "wk", "wv"))."""
        rows, row = self.rows, 0
        for name in names:
            t = self.tensors.get(f"layers.{layer}.{name}.lora_A")
            if t is not None:
                yield name, t, self.tensors[f"layers.{layer}.{name}.lora_B"], \
                    slice(row, row + rows[name])  # fmt: skip
            row += rows[name]

    def __len__(self) -> int:
        return self.flat.size

    def zeros_like(self) -> LoraParams:
        return LoraParams(self.cfg, self.lc)

    def copy(self) -> LoraParams:
        return LoraParams(self.cfg, self.lc, self.flat.copy())


def init_lora(cfg: ModelConfig, lc: LoraConfig, rng: np.random.Generator) -> LoraParams:
    """PEFT's init: A = kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0."""
    lp = LoraParams(cfg, lc)
    for _, a, _ in lp.pairs():
        bound = 1.0 / np.sqrt(a.shape[1])
        a[...] = rng.uniform(-bound, bound, a.shape).astype(np.float32)
    return lp


def stage(base: Mapping[str, np.ndarray], lora: LoraParams, work: Params) -> None:
    """work's adapted matrices = base + scale * B A (the effective weights the kernels read).

    base maps each adapted matrix's name to its frozen value (a Params' `tensors`, or the copies
    Staged keeps); work's other tensors are left as they are. work may be the Params base's
    arrays come from only if base holds copies (Staged stages in place)."""
    s = np.float32(lora.lc.scale)
    for name, a, b in lora.pairs():
        w = work.tensors[name]  # [out, in]
        np.matmul(b, a, out=w)
        w *= s
        w += base[name]


class LoraGrads:
    """model.Gradients of a LoRA run: dA, dB of every adapter into `out`, nothing else.

    For Y = (W + s B A) X the gradient of the effective weight is dW = dY Xᵀ, so
    dB = s dW Aᵀ = dY (s A X)ᵀ and dA = s Bᵀ dW = (s Bᵀ dY) Xᵀ: rank-r products from the dY and
    X micro_step already has, never the full dW (with dropout, the adapter's input is the dropped
    X). The frozen weights get no gradient: norm-weight gradients go to a scratch buffer nobody
    reads, the classifier and embedding to nowhere.
    """

    def __init__(self, lora: LoraParams, out: LoraParams, dropout: LoraDropout | None = None
                 ) -> None:  # fmt: skip
        self.lora, self.out, self.dropout = lora, out, dropout
        self.embedding_trains = False  # frozen, as every other base weight
        self.lowest = min(lora.lc.layer_ids(lora.cfg))  # nothing below it trains
        self.flat = out.flat  # [n_lora], what the ranks all-reduce
        self._scratch: dict[int, np.ndarray] = {}  # size -> a discarded norm-weight gradient

    def start(self) -> None:
        pass  # every adapter's gradient is overwritten by its first matrix() (accumulate=False)

    def matrix(self, dw, layer: int | None, names: tuple[str, ...], dy: np.ndarray,
               x: np.ndarray, accumulate: bool) -> None:  # fmt: skip
        if layer is None:
            return  # the classifier is frozen
        for name, a, b, rows in self.lora.in_block(layer, names):
            base = f"layers.{layer}.{name}"
            xd = x if self.dropout is None else self.dropout.dropped(layer, name, x)
            da, db = self.out.tensors[f"{base}.lora_A"], self.out.tensors[f"{base}.lora_B"]
            dw.add((layer, name, "lora"), [(_adapter_grads, da, db, a, b, dy[rows], xd,
                                            self.lora.lc.scale, accumulate)])  # fmt: skip

    def vector(self, layer: int | None, name: str) -> np.ndarray:
        size = self.lora.cfg.head_dim if name in ("q_norm", "k_norm") else self.lora.cfg.dim
        if size not in self._scratch:
            self._scratch[size] = np.zeros(size, dtype=np.float32)
        return self._scratch[size]

    def embedding(self, dw, dy: np.ndarray, tokens: np.ndarray) -> None:
        pass  # the embedding is frozen


def _adapter_grads(da: np.ndarray, db: np.ndarray, a: np.ndarray, b: np.ndarray, dy: np.ndarray,
                   x: np.ndarray, scale: float, accumulate: bool) -> None:  # fmt: skip
    """da [r, in], db [out, r] (+)= the gradients of A, B from dy [out, S] and x [in, S]."""
    s = np.float32(scale)
    ax = a @ x  # [r, S]
    ax *= s
    btdy = b.T @ dy  # [r, S]
    btdy *= s
    if accumulate:
        db += dy @ ax.T
        da += btdy @ x.T
    else:
        np.matmul(dy, ax.T, out=db)
        np.matmul(btdy, x.T, out=da)


def keep_frozen(params: Params, lora: LoraParams) -> dict[str, np.ndarray]:
    """Copies of the frozen values of the adapted matrices; params' adapted matrices are then
    staged to W + s·B·A in place (what the kernels read from now on)."""
    frozen = {base: params.tensors[base].copy() for base, _, _ in lora.pairs()}
    stage(frozen, lora, params)
    return frozen


class KernelCopies(Protocol):
    """The kernels' own copies of the weights (model.Kernels), refreshed tensor by tensor."""

    def sync(self) -> None: ...

    def update_weights(self, changed: Collection[str] | None = None) -> None: ...


class Staged:
    """optim.WeightCopies of a LoRA run: the kernels read `params` itself, whose adapted matrices
    hold W + s·B·A (staged in place; only those matrices' frozen values are kept aside, so a LoRA
    run holds one copy of the model). After each adapter update the effective weights are
    re-staged, then the kernels' own copies refreshed (sim/ane: the fp16 weight surfaces re-packed;
    nothing recompiles)."""

    def __init__(self, kern: KernelCopies, params: Params, lora: LoraParams,
                 frozen: dict[str, np.ndarray]) -> None:  # fmt: skip
        self.kern, self.params, self.lora, self.frozen = kern, params, lora, frozen

    def sync(self) -> None:
        self.kern.sync()

    def update_weights(self) -> None:
        stage(self.frozen, self.lora, self.params)
        self.kern.update_weights(self.frozen.keys())  # the adapted matrices alone changed

    @contextmanager
    def unstaged(self) -> Iterator[Params]:
        """params with the frozen weights back in place (to save them), re-staged afterwards;
        the kernels' copies are not touched (they keep the same effective weights)."""
        self.kern.sync()
        for name, w in self.frozen.items():
            self.params.tensors[name][...] = w
        try:
            yield self.params
        finally:
            stage(self.frozen, self.lora, self.params)


class LoraDropout:
    """PEFT's lora_dropout on the cpu backend: Y = W X + s B A drop(X), drop(X) = X ⊙ mask / (1-p)
    with an independent mask per adapter, drawn afresh for every window.

    The kernels read W + s B A, so this adds the difference s B A (drop(X) - X) to each adapted
    projection's output and s (mask / (1-p) - 1) ⊙ Aᵀ Bᵀ dY to its input gradient
    (backends.cpu.ProjectionHook); LoraGrads reads drop(X). The masks come from a generator keyed by
    (seed, key, layer, adapter), key = (step, the window's index in the step's global sequence):
    a resumed run, or one with another number of ranks, draws the same ones. Outside begin() ...
    end() (evaluation) nothing is dropped. The fused ANE kernels have no place for the difference:
    the sim and ane backends refuse dropout.
    """

    def __init__(self, lora: LoraParams, seed: int) -> None:
        self.lora, self.p, self.seed = lora, lora.lc.dropout, seed
        self.key: tuple[int, ...] | None = None
        self.masks: dict[tuple[int, str], np.ndarray] = {}  # bool [in, S] of this micro-step

    def begin(self, *key: int) -> None:
        """Before a training micro-step: its masks are keyed by `key` (step, window)."""
        self.key, self.masks = key, {}

    def end(self) -> None:
        self.key, self.masks = None, {}

    def _mask(self, layer: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if (layer, name) not in self.masks:
            assert self.key is not None
            which = list(TARGETS.values()).index(name)
            rng = np.random.default_rng([self.seed, *self.key, layer, which])
            self.masks[(layer, name)] = rng.random(shape, dtype=np.float32) >= self.p
        return self.masks[(layer, name)]

    def dropped(self, layer: int, name: str, x: np.ndarray) -> np.ndarray:
        """drop(x) [in, S] of adapter (layer, name); x itself outside a training micro-step."""
        if self.key is None:
            return x
        m = self._mask(layer, name, x.shape)
        return np.where(m, x * np.float32(1.0 / (1.0 - self.p)), np.float32(0.0))

    def forward(self, layer: int, names: tuple[str, ...], x: np.ndarray, y: np.ndarray) -> None:
        """y [rows, S], the stacked projections `names` of x [in, S] through W + s B A, += the
        dropout's difference s B A (drop(x) - x) for every adapted one."""
        if self.key is None:
            return
        s = np.float32(self.lora.lc.scale)
        for name, a, b, rows in self.lora.in_block(layer, names):
            u = a @ (self.dropped(layer, name, x) - x)  # [r, S]
            u *= s
            y[rows] += b @ u

    def backward(self, layer: int, names: tuple[str, ...], dy: np.ndarray, dx: np.ndarray) -> None:
        """dx [in, S] = (W + s B A)ᵀ dy of the stacked rows `names`, += s (mask / (1-p) - 1) ⊙
        Aᵀ Bᵀ dy_rows for every adapted one."""
        if self.key is None:
            return
        s = np.float32(self.lora.lc.scale)
        for name, a, b, rows in self.lora.in_block(layer, names):
            g = a.T @ (b.T @ dy[rows])  # [in, S]
            g *= s
            m = self.masks[(layer, name)]
            dx += np.where(m, g * np.float32(1.0 / (1.0 - self.p) - 1.0), -g)
