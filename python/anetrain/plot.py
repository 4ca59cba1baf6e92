"""python -m anetrain plot RUN_DIR [RUN_DIR ...] -o curves.png: runs' training curves in a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anetrain.cli import run_cli
from anetrain.errors import UserError
from anetrain.formats import metrics

SUFFIXES = (".png", ".svg")


class PlotError(UserError):
    """A run or an output the plot cannot use."""


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or one line naming the extra."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise PlotError("plot needs matplotlib: pip install 'anetrain[plot]'") from None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text (searchable, smaller)
    import matplotlib.pyplot as plt

    return plt


def load_runs(dirs: list[str]) -> list[tuple[str, list[dict]]]:
    """(label, records) of every run directory; each must hold records."""
    runs = []
    for d in dirs:
        path = Path(d) / metrics.FILE_NAME
        if not path.exists():
            raise PlotError(f"{d}: no {metrics.FILE_NAME} (not a run directory?)")
        recs = metrics.read_records(path)
        if not recs:
            raise PlotError(f"{path}: no records yet")
        runs.append((str(d), recs))
    return runs


def _xy(recs: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[y]) for r in recs if isinstance(r.get(y), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot(runs: list[tuple[str, list[dict]]], out: Path) -> None:
    """Four panels: loss vs steps (validation loss dashed), loss vs tokens, validation loss,
    learning rate; one colour per run, labelled by its directory."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (a_step, a_tok), (a_val, a_lr) = axes
    for i, (label, recs) in enumerate(runs):
        color = f"C{i % 10}"
        a_step.plot(*_xy(recs, "step", "loss"), color=color, label=label, lw=1)
        sv, vv = _xy(recs, "step", "val_loss")
        if sv:
            a_step.plot(sv, vv, color=color, ls="--", marker="o", ms=3, lw=1)
            a_val.plot(sv, vv, color=color, marker="o", ms=3, label=label)
        a_tok.plot(*_xy(recs, "tokens", "loss"), color=color, label=label, lw=1)
        a_lr.plot(*_xy(recs, "step", "lr"), color=color, label=label)
    titles = [(a_step, "loss (validation dashed)", "step"), (a_tok, "loss", "tokens"),
              (a_val, "validation loss", "step"), (a_lr, "learning rate", "step")]  # fmt: skip
    for ax, title, xlabel in titles:
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    if not a_val.has_data():
        a_val.text(0.5, 0.5, "no validation loss recorded", ha="center", va="center",
                   transform=a_val.transAxes)  # fmt: skip
    fig.tight_layout()
    try:
        fig.savefig(out)
    except OSError as e:
        raise PlotError(f"{out}: cannot write the plot ({e.strerror or e})") from None
    finally:
        plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anetrain plot",
        description="Plot the training curves of one or more runs (needs the plot extra: "
        "pip install 'anetrain[plot]').",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (their --out)")
    p.add_argument("-o", "--out", required=True, metavar="FILE",
                   help="the image to write: .png or .svg")  # fmt: skip
    return p


def main_args(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES:
        raise PlotError(f"-o {out}: the file name must end in .png or .svg")
    _pyplot()  # a missing extra is named first
    runs = load_runs(args.runs)
    plot(runs, out)
    print(f"wrote {out} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain plot", main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
