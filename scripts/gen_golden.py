"""Regenerate tests/golden/tiny/*.mil (and the blob manifest) from anetrain.mil.kernels."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))  # this checkout's generator, not an installed copy

try:
    from anetrain.config import preset
    from anetrain.mil.kernels import build_specs
except ImportError as e:  # the checkout's extension is built in place by `make build`
    sys.exit(f"gen_golden: error: {e}; run `make build` in {ROOT} first")

GOLDEN = ROOT / "tests" / "golden" / "tiny"


def manifest(specs) -> str:
    """One line per weight blob: kernel, BLOBFILE path, byte length, sha256."""
    lines = []
    for name, spec in specs.items():
        for path, data in sorted(spec.weights.items()):
            lines.append(f"{name} {path} {len(data)} {hashlib.sha256(data).hexdigest()}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="only list stale files (exit 1 if any)")
    check = p.parse_args(argv).check
    specs = build_specs(preset("tiny"))
    files = {f"{n}.mil": s.mil for n, s in specs.items()} | {"weights.txt": manifest(specs)}
    stale = []
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for fname, text in files.items():
        p = GOLDEN / fname
        if not p.exists() or p.read_text() != text:
            stale.append(fname)
            if not check:
                p.write_text(text)
    print(("stale: " if check else "updated: ") + (", ".join(stale) or "none"))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
