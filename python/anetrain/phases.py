"""Where a training step's time goes: per-phase timings for metrics.jsonl and the report's table."""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable

from anetrain.model import DwPool, Kernels

# Phases of one step, in ms (metrics.jsonl "phase_ms"; they sum to about the step's "ms"):
#   sim/ane  eval     kernel evaluations (the runtime's own timer)
#            stage    surface staging on the caller's thread: activations packed, outputs
#                     unpacked, fp16 surface copies, waits for the weight staging thread
#            cpu      the host ops on the critical path: the rest of the micro-steps (norms,
#                     residuals, classifier, cross-entropy, SwiGLU', RoPE', dispatch)
#            dw_wait  waiting for the dW sgemms still running on the DwPool at the step's end
#            optim    gradient norm, AdamW, and queueing the weight re-staging
#   cpu      forward, backward (every kernel, sgemm and host op inline), optim
# A checkpoint is written after its step's line, so its time ("ckpt_ms") is on the next line,
# outside that line's "ms".
MIL_PHASES = ("eval", "stage", "cpu", "dw_wait", "optim")
CPU_PHASES = ("forward", "backward", "optim")
LABELS = {
    "eval": "kernel evaluation", "stage": "surface staging", "cpu": "CPU ops (critical path)",
    "dw_wait": "waiting for dW", "forward": "forward", "backward": "backward",
    "optim": "optimizer", "ckpt": "checkpoint",
}  # fmt: skip


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if platform.system() == "Darwin" else rss / 1024  # bytes on macOS, KiB else


def rss_mb() -> float:
    """The process's resident memory now (Linux), or its peak (macOS: getrusage has no other)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()


class StepClock:
    """Times the phases of each step from the kernels' and the dW pool's own counters, plus
    micro_step's forward/backward split; adds them to each metrics record and keeps run totals."""

    def __init__(self, kern: Kernels, dw_pool: DwPool | None, tokens_per_step: int) -> None:
        self.kern, self.dw_pool, self.tokens_per_step = kern, dw_pool, tokens_per_step
        self.mil = "eval" in kern.timers()
        self.names = MIL_PHASES if self.mil else CPU_PHASES
        self.totals = dict.fromkeys(self.names, 0.0)  # ms over the run's steps
        self.step_ms = 0.0  # total of the steps' "ms"
        self.ckpt_ms, self.ckpts, self.pending_ckpt_ms = 0.0, 0, None

    def _counters(self) -> tuple[dict[str, float], float]:
        wait = self.dw_pool.wait_seconds if self.dw_pool is not None else 0.0
        return self.kern.timers(), wait

    def start(self) -> tuple[float, dict[str, float]]:
        """At the top of a step: its start time, and the dict micro_step adds its times to."""
        self.t0 = time.perf_counter()
        self.k0, self.w0 = self._counters()
        self.times = {"forward": 0.0, "backward": 0.0}
        self.t_optim = None
        return self.t0, self.times

    def optim_start(self) -> None:
        """Where the micro-steps end and the optimizer (gradient norm first) begins."""
        self.t_optim = time.perf_counter()

    def phases(self) -> dict[str, float]:
        """This step's phases in seconds, measured up to now."""
        optim = time.perf_counter() - self.t_optim if self.t_optim is not None else 0.0
        if not self.mil:
            return {"forward": self.times["forward"], "backward": self.times["backward"],
                    "optim": optim}  # fmt: skip
        k1, w1 = self._counters()
        ev, st = k1["eval"] - self.k0["eval"], k1["stage"] - self.k0["stage"]
        wait = w1 - self.w0
        cpu = self.times["forward"] + self.times["backward"] - ev - st - wait
        return {"eval": ev, "stage": st, "cpu": max(0.0, cpu), "dw_wait": wait, "optim": optim}

    def fill(self, rec: dict, ms: float) -> dict:
        """Add phase_ms, tok_s, rss_mb (and ckpt_ms after a checkpoint) to a step's record."""
        ph = {k: v * 1000.0 for k, v in self.phases().items()}
        for k, v in ph.items():
            self.totals[k] += v
        self.step_ms += ms
        rec["phase_ms"] = {k: round(v, 3) for k, v in ph.items()}
        rec["tok_s"] = round(self.tokens_per_step / (ms / 1000.0), 1) if ms > 0 else None
        rec["rss_mb"] = round(rss_mb(), 1)
        if self.pending_ckpt_ms is not None:
            rec["ckpt_ms"], self.pending_ckpt_ms = round(self.pending_ckpt_ms, 3), None
        return rec

    def checkpoint(self, save: Callable[[], None]) -> None:
        """Run save() and time it; its time goes on the next record."""
        t = time.perf_counter()
        save()
        ms = (time.perf_counter() - t) * 1000.0
        self.ckpt_ms += ms
        self.ckpts += 1
        self.pending_ckpt_ms = ms

    def table(self, steps: int, wall: float) -> list[str]:
        """The report's split: each phase's total, ms per step and share of the step time, then
        the checkpoints' and the compile's time and share of the wall time (compile included)."""
        n, total = max(1, steps), max(self.step_ms, 1e-9)
        compile_s = self.kern.timers()["compile"]
        wall_all = wall + compile_s
        lines = [f"{'phase':<24} {'total s':>9} {'ms/step':>9} {'share':>7}"]
        rows = [(LABELS[k], self.totals[k]) for k in self.names]
        rows.append(("other", self.step_ms - sum(self.totals.values())))
        for label, ms in rows:
            lines.append(f"{label:<24} {ms / 1000:9.3f} {ms / n:9.2f} {100 * ms / total:6.1f}%")
        lines.append(f"{'step total':<24} {self.step_ms / 1000:9.3f} {self.step_ms / n:9.2f} "
                     f"{100.0:6.1f}%")  # fmt: skip
        ckpt = (f"checkpoint ({self.ckpts}x)", self.ckpt_ms / 1000)
        for label, s in (ckpt, ("compile", compile_s)):
            lines.append(f"{label:<24} {s:9.3f} {'':>9} {100 * s / wall_all:6.1f}% of wall "
                         f"{wall_all:.2f} s")  # fmt: skip
        return lines
