"""MilKernels: the ten training kernels as compiled MIL programs on a Runtime (sim or ANE)."""

from __future__ import annotations

import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from anetrain import native
from anetrain.backends.platform import ane_misfit, misfit_error
from anetrain.backends.runtime import Executable, Runtime, Surface
from anetrain.config import ModelConfig
from anetrain.mil.errors import MilError
from anetrain.mil.kernels import KERNELS, KernelSpec, Layout, build_specs
from anetrain.params import Params

# Same interface as CpuKernels (model.Kernels): channel-first fp32 [C, S] in and out. Each
# kernel is compiled once; every surface layout comes from mil/kernels.py (KernelSpec.inp/.out).
#
#   weight-bearing kernels   one input surface per layer [C_in, W]: weight segments staged after
#                            init and after every optimizer step (stage "T" packs Wᵀ, "raw" packs
#                            W, upstream.md §5.3); a call writes only its activation segments
#   sdpaBwd1, sdpaBwd2       no weights: one input surface each, shared by all layers
#   outputs                  one surface per kernel [C_out, S], read right after the evaluation
#
# Staging runs on a helper thread: update_weights() queues one job per (kernel, layer) in the
# order the next micro-step uses them, and a kernel call waits only for its own surface, so
# re-staging overlaps the forward pass instead of preceding it.

# Kernels in the order one micro-step first uses them (the staging order).
FORWARD = ("sdpaFwd", "woFwd", "ffnFused")
BACKWARD = ("ffnBwdW2t", "ffnBwdW13t", "wotBwd", "qBwd", "kvBwd")
# sdpaBwd2 input segments copied fp16 -> fp16 from sdpaBwd1's surfaces: name -> source ("out"/"inp")
SDPA_COPIES = {"P": "out", "dP": "out", "q_rope": "inp", "k_tiled": "inp"}


def stage_weights(dst: np.ndarray, layout: Layout, lp) -> None:
    """Pack every weight segment of `layout` from the fp32 masters of one layer (lp).

    dst: locked input surface, uint16 [C, W]. A "T" segment [in, out] receives Wᵀ of
    W[out, in] (the packer transposes); a "raw" segment [out, in] receives W as is; a "bcast"
    segment [n, width] receives a vector weight w [n] in each of its columns.
    """
    for s in layout.segments:
        if not s.stage:
            continue
        w = getattr(lp, s.weight)  # fp32 [out, in] ([n] for "bcast")
        if w.shape != s.weight_shape:
            raise MilError(f"staging {s.name}: weight {w.shape}, segment wants W of "
                           f"{s.weight_shape}")  # fmt: skip
        if s.stage == "bcast":
            w = np.ascontiguousarray(np.broadcast_to(w[:, None], s.shape))  # [n, width]
        native.pack(dst, s.c0, s.s0, w, transpose=s.stage == "T")


class MilKernels:
    """model.Kernels over compiled MIL programs; fp16 on the device, fp32 at the edges."""

    fp16 = True  # train.py: dynamic loss scaling
    overlap_dw = True  # model.py: dW sgemms on worker threads (DwPool), behind kernel evaluations
    threads = 1  # host elementwise ops run on the calling thread: the dW workers own the cores

    def __init__(self, cfg: ModelConfig, params: Params, runtime: Runtime,
                 async_staging: bool = True, own_runtime: bool = False) -> None:  # fmt: skip
        """own_runtime: close() closes the runtime too (make_kernels built it for us)."""
        self.cfg, self.params, self.rt = cfg, params, runtime
        self.own_runtime = own_runtime
        self.name = runtime.name
        self.S = cfg.seq_len
        if runtime.strict:  # only a strict runtime refuses sizes; the simulator runs any
            why = ane_misfit(cfg, detail=True)
            if why is not None:
                raise misfit_error(runtime.name, why)
        specs = build_specs(cfg)
        self.specs: dict[str, KernelSpec] = specs
        self._sdpa_outs = tuple(specs["sdpaFwd"].out.names)  # attn, q_rope, k_rope, v(, q/k_pre)
        # sdpa_bwd copies these surface to surface: (sdpaBwd1 side, its segment, sdpaBwd2's)
        b1, b2 = specs["sdpaBwd1"], specs["sdpaBwd2"]
        self._sdpa_copies = [(side, getattr(b1, side)[seg], b2.inp[seg])
                             for seg, side in SDPA_COPIES.items()]  # fmt: skip
        for _, s, d in self._sdpa_copies:
            if s.shape != d.shape:
                raise MilError(f"sdpa_bwd: {s.name} is {s.shape} in sdpaBwd1, {d.shape} in "
                               "sdpaBwd2")  # fmt: skip
        self.executables: dict[str, Executable] = {}
        self.inputs: dict[str, list[Surface]] = {}  # kernel -> per-layer (or one) input surface
        t0 = time.perf_counter()
        for name in KERNELS:
            k = self.executables[name] = runtime.compile(specs[name])
            per_layer = any(s.stage for s in specs[name].inp.segments)
            self.inputs[name] = [k.new_input() for _ in range(cfg.n_layers if per_layer else 1)]
        self.setup_seconds = time.perf_counter() - t0
        self.t_start = time.perf_counter()
        self.stage_seconds = 0.0  # CPU time packing the weights (on the staging thread when async)
        self.io_seconds = 0.0  # packing activations and unpacking outputs (caller's thread)
        self.calls = dict.fromkeys(KERNELS, 0)
        self.stagings = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="anetrain-stage") \
            if async_staging else None  # fmt: skip
        self._pending: dict[tuple[str, int], Future] = {}
        self.update_weights()

    # ---- weights ----------------------------------------------------------------------------

    def _stage(self, name: str, layer: int) -> None:
        t = time.thread_time()  # CPU, not wall: the staging thread shares the cores with dW jobs
        with self.inputs[name][layer].lock() as dst:
            stage_weights(dst, self.specs[name].inp, self.params.layers[layer])
        self.stage_seconds += time.thread_time() - t

    def update_weights(self, changed: Collection[str] | None = None) -> None:
        """Re-stage the layers' weight segments from the fp32 masters (after each Adam step): of
        every kernel, or (`changed`: Params names) of the kernels holding a changed tensor."""
        self.sync()
        L = self.cfg.n_layers
        order = [(n, i) for i in range(L) for n in FORWARD] + \
                [(n, i) for i in reversed(range(L)) for n in BACKWARD]  # fmt: skip
        if changed is not None:
            order = [(n, i) for n, i in order if any(f"layers.{i}.{s.weight}" in changed
                     for s in self.specs[n].inp.segments if s.stage)]  # fmt: skip
        for key in order:
            if self._pool is None:
                self._stage(*key)
            else:
                self._pending[key] = self._pool.submit(self._stage, *key)
        self.stagings += 1

    def sync(self) -> None:
        """Wait until all queued staging is done (re-raises a staging error)."""
        pending, self._pending = self._pending, {}
        for f in pending.values():
            f.result()

    def _input(self, name: str, layer: int) -> Surface:
        f = self._pending.pop((name, layer), None)
        if f is not None:
            f.result()
        surfaces = self.inputs[name]
        return surfaces[layer] if len(surfaces) > 1 else surfaces[0]

    # ---- one evaluation ---------------------------------------------------------------------

    def _write(self, name: str, surface: Surface, acts: dict[str, np.ndarray]) -> None:
        """fp32 activations [nch, width] -> fp16 into their segments of the input surface."""
        layout = self.specs[name].inp
        with surface.lock() as dst:  # [C_in, W]
            for seg_name, a in acts.items():
                s = layout[seg_name]
                if a.shape != s.shape:
                    raise ValueError(f"{name}.{seg_name}: got {a.shape}, layout wants {s.shape}")
                native.pack(dst, s.c0, s.s0, np.ascontiguousarray(a, dtype=np.float32))

    def _read(self, name: str, seg_names: tuple[str, ...]) -> list[np.ndarray]:
        """Output segments of `name` as fresh fp32 arrays [nch, width]."""
        layout = self.specs[name].out
        with self.executables[name].out.lock(read_only=True) as src:  # [C_out, S]
            return [native.unpack(src, s.c0, s.s0, s.nch, s.width)
                    for s in (layout[n] for n in seg_names)]  # fmt: skip

    def _run(self, name: str, layer: int, outs: tuple[str, ...], **acts: np.ndarray):
        t = time.perf_counter()
        e0 = self.rt.eval_seconds
        surface = self._input(name, layer)
        self._write(name, surface, acts)
        self.executables[name].eval(surface)
        self.calls[name] += 1
        res = self._read(name, outs)
        self.io_seconds += time.perf_counter() - t - (self.rt.eval_seconds - e0)
        return res

    # ---- forward ----------------------------------------------------------------------------

    def sdpa_fwd(self, layer: int, xnorm: np.ndarray):
        """attn [Q,S], q_rope [Q,S], k_rope [KV,S], v [KV,S]; with qk_norm also q_pre [Q,S],
        k_pre [KV,S] (the projections before Qwen3's q/k norm, model.Kernels)."""
        return tuple(self._run("sdpaFwd", layer, self._sdpa_outs, xnorm=xnorm))

    def wo_fwd(self, layer: int, attn: np.ndarray) -> np.ndarray:
        return self._run("woFwd", layer, ("o",), attn=attn)[0]  # [D, S]

    def ffn_fused(self, layer: int, x2norm: np.ndarray):
        ffn, h1, h3, gate = self._run("ffnFused", layer, ("ffn", "h1", "h3", "gate"),
                                      x2norm=x2norm)  # fmt: skip
        return ffn, h1, h3, gate  # [D,S], [F,S] x3

    # ---- backward ---------------------------------------------------------------------------

    def ffn_bwd_w2t(self, layer: int, dffn: np.ndarray) -> np.ndarray:
        return self._run("ffnBwdW2t", layer, ("dgate",), dffn=dffn)[0]  # [F, S]

    def ffn_bwd_w13t(self, layer: int, dh1: np.ndarray, dh3: np.ndarray) -> np.ndarray:
        return self._run("ffnBwdW13t", layer, ("dx",), dh1=dh1, dh3=dh3)[0]  # [D, S]

    def wot_bwd(self, layer: int, dx2: np.ndarray) -> np.ndarray:
        return self._run("wotBwd", layer, ("dattn",), dx2=dx2)[0]  # [Q, S]

    def sdpa_bwd1(self, layer: int, q: np.ndarray, k_tiled: np.ndarray, v_tiled: np.ndarray,
                  dattn: np.ndarray):  # fmt: skip
        dv, p, dp = self._run("sdpaBwd1", layer, ("dv_full", "P", "dP"), q_rope=q,
                              k_tiled=k_tiled, v_tiled=v_tiled, dattn=dattn)  # fmt: skip
        return dv, p, dp  # [Q,S], [H·S,S], [H·S,S]

    def sdpa_bwd2(self, layer: int, p: np.ndarray, dp: np.ndarray, q: np.ndarray,
                  k_tiled: np.ndarray):  # fmt: skip
        dq, dk = self._run("sdpaBwd2", layer, ("dq", "dk_full"), P=p, dP=dp, q_rope=q,
                           k_tiled=k_tiled)  # fmt: skip
        return dq, dk  # [Q,S], [Q,S]

    def sdpa_bwd(self, layer: int, q: np.ndarray, k_tiled: np.ndarray, v_tiled: np.ndarray,
                 dattn: np.ndarray):  # fmt: skip
        """sdpaBwd1 -> fp16 surface copies -> sdpaBwd2: P and dP never leave fp16.

        P, dP come from sdpaBwd1's output surface, q_rope and k_tiled from its input surface
        (already fp16 there). Returns (dq, dk_full, dv_full), all [Q, S] fp32.
        """
        (dv,) = self._run("sdpaBwd1", layer, ("dv_full",), q_rope=q, k_tiled=k_tiled,
                          v_tiled=v_tiled, dattn=dattn)  # fmt: skip
        t = time.perf_counter()
        surf1 = {"inp": self._input("sdpaBwd1", layer), "out": self.executables["sdpaBwd1"].out}
        in2 = self._input("sdpaBwd2", layer)
        for side, s, d in self._sdpa_copies:  # shapes checked equal in __init__
            self.rt.copy(in2, d.c0, d.s0, surf1[side], s.c0, s.s0, s.nch, s.width)
        self.io_seconds += time.perf_counter() - t
        dq, dk = self._run("sdpaBwd2", layer, ("dq", "dk_full"))
        return dq, dk, dv

    def q_bwd(self, layer: int, dq: np.ndarray) -> np.ndarray:
        return self._run("qBwd", layer, ("dx",), dq=dq)[0]  # [D, S]

    def kv_bwd(self, layer: int, dk: np.ndarray, dv: np.ndarray) -> np.ndarray:
        return self._run("kvBwd", layer, ("dx",), dk=dk, dv=dv)[0]  # [D, S]

    # ---- report -----------------------------------------------------------------------------

    def stats(self) -> dict[str, str]:
        """Lines for train.py's efficiency report."""
        rt, L = self.rt, self.cfg.n_layers
        wall = time.perf_counter() - self.t_start
        micro = self.calls["qBwd"] // L  # backward passes (qBwd runs once per layer)
        fwd_only = self.calls["sdpaFwd"] // L - micro  # forward-only passes (validation)
        per_micro = (rt.evals - 3 * L * fwd_only) / max(1, micro)
        alloc = self.setup_seconds - rt.compile_seconds
        return {
            "compiles": f"{rt.compiles} kernels ({rt.name} runtime)",
            "compile time": f"{rt.compile_seconds:.3f} s (+ {alloc:.3f} s allocating surfaces)",
            "kernel evaluation": f"{rt.eval_seconds:.3f} s for {rt.evals} evaluations "
                                 f"({1e3 * rt.eval_seconds / max(1, rt.evals):.3f} ms each)",
            "host time": f"{wall - rt.eval_seconds:.3f} s outside kernel evaluations "
                         f"(activation pack/unpack {self.io_seconds:.3f} s; weight staging "
                         f"{self.stage_seconds:.3f} s CPU, {self.stagings} times, own thread)",
            "evaluations per micro-step": f"{per_micro:.1f} (3 forward + 7 backward per layer "
                                          f"x {L}; {fwd_only} forward-only passes besides)",
        }  # fmt: skip

    def timers(self) -> dict[str, float]:
        """Cumulative seconds: compile (with surfaces), kernel evaluation, activation staging."""
        return {"compile": self.setup_seconds, "eval": self.rt.eval_seconds,
                "stage": self.io_seconds}  # fmt: skip

    def close(self) -> None:
        """Finish staging, free every program and surface, and close the runtime if we own it
        (on the ANE: unload, release, remove the temp dirs now, not at interpreter exit)."""
        try:
            if self._pool is not None:  # waits for queued staging, raising nothing: an error
                self._pool.shutdown()  # there reached the caller already, or no longer matters
                self._pool, self._pending = None, {}
        finally:
            for k in self.executables.values():
                k.free()
            self.executables.clear()
            self.inputs.clear()
            if self.own_runtime:
                self.rt.close()
