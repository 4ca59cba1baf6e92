"""python -m anetrain.fuse: merge a LoRA run's or a PEFT adapter's adapters into their base."""

from __future__ import annotations

import sys

from anetrain.cli import run_cli
from anetrain.export import export


def fuse(argv: list[str] | None) -> int:
    """export's writer, on a model that must hold adapters (load_model merges them)."""
    return export(argv, fuse=True)


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.fuse", fuse, argv)


if __name__ == "__main__":
    sys.exit(main())
