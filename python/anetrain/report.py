"""What a training run prints: the progress bar or log lines, and the end-of-run report."""

from __future__ import annotations

import sys

import numpy as np

from anetrain.config import ModelConfig
from anetrain.phases import StepClock, peak_rss_mb

SLOW_STEP_S = 3.0  # a step longer than this shows its micro-steps on the bar


class Progress:
    """A tqdm bar on a terminal; else about 20 log lines per run (none with quiet)."""

    def __init__(self, step0: int, steps: int, tokens_per_step: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.tqdm, self.steps, self.quiet = tqdm, steps, quiet
        self.tokens_per_step = tokens_per_step
        self.bar = tqdm(total=steps, initial=step0, disable=quiet or not sys.stderr.isatty(),
                        unit="step", dynamic_ncols=True)  # fmt: skip
        self.log_every = max(1, (steps - step0) // 20)

    def note(self, text: str) -> None:
        """A line that does not break the bar (nothing when quiet)."""
        if not self.quiet:
            self.tqdm.write(text)

    def inside_step(self, micro: int, accum: int, seconds: float) -> None:
        """After each micro-step: once a step has taken a few seconds, the bar says how far into
        it the run is (a stories110m step with --accum 10 takes minutes on a CPU)."""
        if not self.bar.disable and seconds >= SLOW_STEP_S:
            self.bar.set_postfix_str(f"step {self.bar.n + 1}: micro-step {micro}/{accum}, "
                                     f"{seconds:.0f} s")  # fmt: skip

    def update(self, rec: dict, ms: float) -> None:
        """After each optimizer step, with its metrics record."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                             tok_s=f"{self.tokens_per_step / (ms / 1000):.0f}")  # fmt: skip
        step = rec["step"]
        if self.bar.disable and not self.quiet and \
                (step % self.log_every == 0 or step == self.steps):  # fmt: skip
            extra = f" val_loss {rec['val_loss']:.4f}" if "val_loss" in rec else ""
            print(f"step {step}/{self.steps} loss {rec['loss']:.4f}{extra} lr {rec['lr']:.2e} "
                  f"{ms:.0f} ms", flush=True)  # fmt: skip

    def close(self) -> None:
        self.bar.close()


def final_report(run, step_ms: list[float], step0: int, wall: float, scaler, kern,
                 clock: StepClock, quiet: bool) -> None:  # fmt: skip
    """What train prints at the end: the efficiency report, the phase split (clock's table)
    and where the files are (with quiet, only the checkpoint's path)."""
    if quiet or not step_ms:
        print(f"checkpoint: {run.ckpt_path}")
        return
    notes = [f"loss scale {scaler.scale:g}, skipped steps {scaler.skipped}"] \
        if scaler.dynamic else []  # fmt: skip
    for line in efficiency_report(run.cfg, step_ms, step0 + 1, run.state.step, wall,
                                  (run.state.ranks or 1) * run.tc.accum * run.cfg.seq_len,
                                  notes, kern.stats()):  # fmt: skip
        print(line)
    print("--- where the step time goes ---")
    for line in clock.table(len(step_ms), wall):
        print(line)
    print(f"checkpoint: {run.ckpt_path}, metrics: {run.metrics_path}")


def efficiency_report(cfg: ModelConfig, step_ms: list[float], first: int, last: int, wall: float,
                      tokens_per_step: int, notes: list[str],
                      backend_stats: dict[str, str]) -> list[str]:  # fmt: skip
    """The end-of-run report: step times, throughput, achieved FLOP/s, memory, then `notes`
    (e.g. the loss scale) and the backend's own figures."""
    n = len(step_ms)
    med = float(np.median(step_ms))
    tok_s = tokens_per_step / (med / 1000.0)
    flops_per_token = 6 * cfg.n_params() + 12 * cfg.n_layers * cfg.dim * cfg.seq_len
    lines = [
        "=== efficiency report ===",
        f"steps {n} ({first}..{last}), wall {wall:.2f} s, median {med:.1f} ms/step",
        f"tokens/s {tok_s:,.0f} (median step), {n * tokens_per_step / wall:,.0f} (wall)",
        f"achieved {flops_per_token * tok_s / 1e9:.1f} GFLOPS "
        f"({flops_per_token / 1e6:.1f} MFLOP/token), peak RSS {peak_rss_mb():.0f} MB",
    ]
    return lines + notes + [f"{key}: {val}" for key, val in backend_stats.items()]
