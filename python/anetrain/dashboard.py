"""python -m anetrain dashboard [RUN_DIR]: a live terminal view of a run's metrics.jsonl."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from anetrain.cli import Stopped, run_cli
from anetrain.errors import UserError
from anetrain.formats import metrics
from anetrain.phases import LABELS

BLOCKS = " ▁▂▃▄▅▆▇█"  # 0..8 eighths of a character cell
RECENT = 20  # steps averaged for the phase bars, step time and ETA


class DashboardError(UserError):
    """A run directory the dashboard cannot watch."""


# ---- text charts ------------------------------------------------------------------------------


def resample(values: list[float], width: int) -> list[float]:
    """At most `width` values: the means of equal buckets (all of them when they fit)."""
    n = len(values)
    if n <= width:
        return list(values)
    return [statistics.fmean(values[n * i // width : max(n * i // width + 1, n * (i + 1) // width)])
            for i in range(width)]  # fmt: skip


def sparkline(values: list[float], width: int) -> str:
    """One row of block characters, lowest value ▁, highest █."""
    vals = resample(values, width)
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(BLOCKS[1 + round(7 * (v - lo) / span)] for v in vals)


def chart(values: list[float], width: int, height: int) -> list[str]:
    """`height` rows of block characters (eighths of a cell per column), y labels on the left."""
    vals = resample(values, width)
    if not vals:
        return ["(no data yet)"]
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    levels = [round((v - lo) / span * (8 * height - 1)) + 1 for v in vals]  # 1..8·height
    rows = []
    for r in reversed(range(height)):
        label = f"{hi:8.4g} ┤" if r == height - 1 else f"{lo:8.4g} ┤" if r == 0 else " " * 9 + "│"
        rows.append(label + "".join(BLOCKS[min(8, max(0, lv - 8 * r))] for lv in levels))
    return rows


def bar(share: float, width: int) -> str:
    n = round(max(0.0, min(1.0, share)) * width)
    return "█" * n + "░" * (width - n)


def duration(seconds: float) -> str:
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


# ---- power (macOS powermetrics) ---------------------------------------------------------------


def parse_powermetrics(text: str) -> dict[str, float]:
    """The mW figures of one powermetrics sample: {"CPU": .., "GPU": .., "ANE": ..}."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^(CPU|GPU|ANE) Power:\s*([\d.]+)\s*mW",
                                                     text, re.M)}  # fmt: skip


class Power:
    """ANE/CPU power from powermetrics on a Mac (it needs root), sampled on a background thread
    (or once, for --once); otherwise a line that says why there is none and how to get it."""

    CMD = ["powermetrics", "--samplers", "cpu_power,ane_power", "-i", "1000", "-n", "1"]

    def __init__(self, enabled: bool, once: bool) -> None:
        self.sample: dict[str, float] = {}
        self.note = ""
        if not enabled:
            self.note = "off (--no-power)"
        elif sys.platform != "darwin":
            self.note = "not available (macOS only)"
        elif os.geteuid() != 0:
            self.note = "powermetrics needs root: run the dashboard with sudo for ANE/CPU power"
        elif once:
            self._sample()
        else:
            threading.Thread(target=self._sample_forever, daemon=True).start()

    def _sample(self) -> bool:
        try:
            out = subprocess.run(self.CMD, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError) as e:
            self.note = f"powermetrics failed: {e}"
            return False
        self.sample = parse_powermetrics(out)
        return True

    def _sample_forever(self) -> None:
        while self._sample():
            pass

    def text(self) -> str:
        if self.sample:
            return "  ".join(f"{k} {v / 1000:.2f} W" for k, v in sorted(self.sample.items()))
        return self.note or "waiting for powermetrics..."


# ---- the view ---------------------------------------------------------------------------------


class RunView:
    """What the dashboard knows of a run: its records (from metrics.jsonl) and its length."""

    def __init__(self, run_dir: Path, steps: int | None) -> None:
        self.dir, self.steps = run_dir, steps
        self.reader = metrics.MetricsReader(run_dir / metrics.FILE_NAME)
        self.recs: list[dict] = []
        self.backend = ""
        self._header()

    def _header(self) -> None:
        """Total steps and backend from the checkpoint's header, when there is one."""
        from anetrain.formats import checkpoint

        try:
            header = checkpoint.read_header(self.dir / "checkpoint.bin")[0]
        except checkpoint.CheckpointError:
            return
        train = header.get("train") or {}
        if self.steps is None and isinstance(train.get("steps"), int):
            self.steps = train["steps"]
        self.backend = str(header.get("backend") or "")

    def poll(self) -> None:
        new, restarted = self.reader.poll()
        if restarted:
            self.recs = []
        self.recs += new
        if new and self.steps is None:
            self._header()

    def series(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.recs if isinstance(r.get(key), (int, float))]


def _stat_text(name: str, values: list[float], fmt: str, width: int) -> str:
    if not values:
        return f"{name}: none recorded"
    return f"{name} {format(values[-1], fmt)}  (min {format(min(values), fmt)}, max " \
        f"{format(max(values), fmt)})\n{sparkline(values, width)}"  # fmt: skip


def _header_text(v: RunView) -> str:
    last = v.recs[-1] if v.recs else {}
    step = last.get("step", 0)
    total = f"/{v.steps} ({100 * step / v.steps:.0f}%)" if v.steps else ""
    recent = [r["ms"] for r in v.recs[-RECENT:] if isinstance(r.get("ms"), (int, float))]
    spent = sum(r.get("ms", 0) + r.get("ckpt_ms", 0) for r in v.recs) / 1000
    left = (v.steps or 0) - step
    eta = "unknown (pass --steps)" if not v.steps else "done" if left <= 0 else \
        duration(statistics.median(recent) / 1000 * left) if recent else "?"  # fmt: skip
    backend = f" · backend {v.backend}" if v.backend else ""
    return f"{v.dir}{backend}\nstep {step}{total} · tokens {last.get('tokens', 0):,} · " \
        f"training time {duration(spent)} · ETA {eta}"  # fmt: skip


def _phase_text(v: RunView, width: int) -> str:
    recent = [r["phase_ms"] for r in v.recs[-RECENT:] if isinstance(r.get("phase_ms"), dict)]
    if not recent:
        return "no phase timings in this run's metrics (written by anetrain after 0.1.0)"
    names = list(recent[-1])
    mean = {k: statistics.fmean(p.get(k, 0.0) for p in recent) for k in names}
    total = sum(mean.values()) or 1.0
    lines = [f"{LABELS.get(k, k):<24} {bar(ms / total, width)} {100 * ms / total:5.1f}% "
             f"{ms:8.2f} ms" for k, ms in mean.items()]  # fmt: skip
    ck = [r["ckpt_ms"] for r in v.recs if "ckpt_ms" in r]
    if ck:
        lines.append(f"checkpoints: {len(ck)}, last {ck[-1]:.0f} ms")
    step = statistics.median(r["ms"] for r in v.recs[-RECENT:])
    return "\n".join(lines) + f"\nstep {step:.1f} ms (median; phases: mean of the last " \
        f"{len(recent)} steps)"  # fmt: skip


def _loss_text(v: RunView, width: int) -> str:
    loss = v.series("loss")
    val = [(r["step"], r["val_loss"]) for r in v.recs if isinstance(r.get("val_loss"), float)]
    lines = chart(loss, width, 8)
    if loss:
        lines.append(f"train loss {loss[-1]:.4f} (min {min(loss):.4f})")
    if val:
        spark = sparkline([x for _, x in val], width) if len(val) > 1 else ""
        lines.append(f"validation loss {val[-1][1]:.4f} at step {val[-1][0]} ({len(val)} "
                     f"evaluations) {spark}")  # fmt: skip
    else:
        lines.append("validation loss: none yet")
    return "\n".join(lines)


def _scale_text(v: RunView) -> str:
    last = v.recs[-1] if v.recs else {}
    if "loss_scale" not in last:
        return "loss scale: none (fp32 backend: no loss scaling)"
    return f"loss scale {last['loss_scale']:g}\nskipped steps {last.get('skipped', 0)}"


def render(v: RunView, power: Power, width: int):
    """One frame: a rich renderable."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    inner = max(20, width - 14)
    half = max(10, width // 2 - 6)
    row1 = Table.grid(expand=True)
    row1.add_column(ratio=1)
    row1.add_column(ratio=1)
    row1.add_row(Panel(_stat_text("lr", v.series("lr"), ".3e", half), title="learning rate"),
                 Panel(_stat_text("tok/s", v.series("tok_s"), ",.0f", half), title="tokens/s"))
    row2 = Table.grid(expand=True)
    for _ in range(3):
        row2.add_column(ratio=1)
    row2.add_row(Panel(_scale_text(v), title="loss scale"),
                 Panel(_stat_text("RSS MB", v.series("rss_mb"), ".0f", max(8, width // 3 - 6)),
                       title="memory"),
                 Panel(power.text(), title="power"))  # fmt: skip
    return Group(
        Panel(_header_text(v), title="anetrain dashboard"),
        Panel(_loss_text(v, inner), title="loss"),
        row1,
        Panel(_phase_text(v, max(10, width - 60)), title="step time by phase"),
        row2,
    )


# ---- the command ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anetrain dashboard",
        description="Watch a run: follows RUN_DIR/metrics.jsonl as it grows (reads it only: "
        "attach to a run started elsewhere, or replay a finished one). Ctrl-C leaves.",
    )
    p.add_argument("run_dir", nargs="?", default="out", metavar="RUN_DIR",
                   help="the run's --out directory (default out/)")  # fmt: skip
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--steps", type=int, default=None,
                   help="the run's total steps, for the ETA (default: from its checkpoint)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (1)")
    p.add_argument("--width", type=int, default=None,
                   help="columns (default: the terminal's, or 100 when not a terminal)")
    p.add_argument("--no-power", action="store_true", help="do not sample powermetrics (macOS)")
    return p


def _rich():
    try:
        import rich.console  # noqa: F401
    except ModuleNotFoundError:
        raise DashboardError("the dashboard needs the rich package: pip install rich") from None


def dashboard(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise DashboardError(f"{run_dir}: no such run directory")
    if args.interval <= 0:
        raise DashboardError(f"--interval must be > 0, got {args.interval}")
    _rich()
    from rich.console import Console
    from rich.live import Live

    tty = sys.stdout.isatty()
    console = Console(width=args.width or (None if tty else 100), highlight=False)
    view, power = RunView(run_dir, args.steps), Power(not args.no_power, args.once)
    view.poll()
    if args.once:
        if not view.recs and not (run_dir / metrics.FILE_NAME).exists():
            raise DashboardError(f"{run_dir}: no {metrics.FILE_NAME} (not a run directory?)")
        console.print(render(view, power, console.width))
        return 0
    try:
        with Live(render(view, power, console.width), console=console, screen=tty,
                  auto_refresh=False) as live:  # fmt: skip
            while True:
                time.sleep(args.interval)
                view.poll()
                live.update(render(view, power, console.width), refresh=True)
    except (Stopped, KeyboardInterrupt):
        return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain dashboard", dashboard, argv)


if __name__ == "__main__":
    sys.exit(main())
