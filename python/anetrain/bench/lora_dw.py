"""The dW jobs of a LoRA step for the latency model: frozen dW dropped, rank-r dA, dB queued."""

from __future__ import annotations

import numpy as np

from anetrain.config import ModelConfig
from anetrain.lora import LoraParams

# LORA PATH PLUG-IN: model.micro_step queues every weight's full dW on its DwPool; a LoRA run
# computes them all and then adapter_grads() turns the adapted ones into dA, dB (train.py today).
# The planned Gradients object of model.micro_step (issue 20 plan) queues no dW for frozen
# weights and the rank-r dA, dB products instead. Until it lands, AdapterJobs models that path
# on the current micro_step: it intercepts DwPool.matmul by the job key micro_step uses (the
# gradient buffer's block), drops the frozen ones, and queues for each adapted matrix in the block
# the products the Gradients path computes from the same dY and X. When micro_step takes a
# Gradients object, bench overlap's LoRA run passes the real one and this file goes.


def _blocks(cfg: ModelConfig) -> dict[str, tuple[str, int]]:
    """Params matrix -> (micro_step's dW job key suffix, first row of the matrix in that block)."""
    Q, KV, F = cfg.q_dim, cfg.kv_dim, cfg.hidden_dim
    return {"wq": ("wqkv", 0), "wk": ("wqkv", Q), "wv": ("wqkv", Q + KV), "wo": ("wo", 0),
            "w1": ("w13", 0), "w3": ("w13", F), "w2": ("w2", 0)}  # fmt: skip


def adapter_products(dy: np.ndarray, xt: np.ndarray, a: np.ndarray, b: np.ndarray,
                     da: np.ndarray, db: np.ndarray, scale: float,
                     accumulate: bool) -> None:  # fmt: skip
    """dB (+)= s dY (A X)ᵀ, dA (+)= s (Bᵀ dY) Xᵀ: the gradients of W + s B A without dW.

    dy [out, S] (dLoss/d of the matrix's output), xt [S, in] (its input, transposed),
    a [r, in], b [out, r], da [r, in], db [out, r].
    """
    s = np.float32(scale)
    xa = xt @ a.T  # [S, r]
    gb = dy @ xa  # [out, r]
    ga = (b.T @ dy) @ xt  # [r, S] @ [S, in] = [r, in]
    gb *= s
    ga *= s
    if accumulate:
        db += gb
        da += ga
    else:
        db[...] = gb
        da[...] = ga


class AdapterJobs:
    """DwPool mixin (put it before the pool class): the LoRA dW jobs, written into `out`'s dA, dB.

    Frozen weights (every unadapted matrix, the classifier and the embedding table) get no job.
    Call adapt() before the first micro_step.
    """

    def adapt(self, lora: LoraParams, out: LoraParams) -> None:
        blocks = _blocks(lora.cfg)
        self.adapter_scale = lora.lc.scale
        # micro_step's job key (layer, block) -> [(first row, A, B, dA, dB)]
        self.plan: dict[tuple[int, str], list[tuple]] = {}
        for name, a, b in lora.pairs():
            _, layer, w = name.split(".")  # layers.{l}.{w}
            block, row = blocks[w]
            da, db = out.tensors[f"{name}.lora_A"], out.tensors[f"{name}.lora_B"]
            self.plan.setdefault((int(layer), block), []).append((row, a, b, da, db))

    def matmul(self, key: object, g: np.ndarray, a: np.ndarray, b: np.ndarray,
               accumulate: bool) -> None:  # fmt: skip
        """A frozen block's dW (g = a @ b) is dropped; its adapted rows get their products."""
        for row, la, lb, da, db in self.plan.get(key, ()):  # type: ignore[call-overload]
            dy = a[row : row + lb.shape[0]]  # [out, S]
            self.add(("lora", key, row), [(adapter_products, dy, b, la, lb, da, db,
                                           self.adapter_scale, accumulate)])  # fmt: skip

    def add(self, key: object, parts: list[tuple]) -> None:
        if key in ("wcls", "embed"):  # the embedding scatter: the table is frozen
            return
        super().add(key, parts)  # type: ignore[misc]
