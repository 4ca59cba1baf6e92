"""python -m anetrain plot: PNG and SVG curves of one or several runs, and its one-line errors."""

from __future__ import annotations

import struct
import sys

import pytest

from anetrain.plot import main
from anetrain.train import main as train_main

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    dirs = []
    for i, extra in enumerate([[], ["--lr", "1e-3"], ["--accum", "2", "--eval-every", "2"]]):
        d = root / f"run{i}"
        assert train_main(["--model", "tiny", "--quiet", "--threads", "2", "--steps", "6",
                           "--out", str(d), *extra]) == 0  # fmt: skip
        dirs.append(str(d))
    return dirs


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("n", [1, 3])
def test_png_decodes(runs, tmp_path, capsys, n):
    import matplotlib.image

    out = tmp_path / "curves.png"
    assert main([*runs[:n], "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    w, h = _png_size(out)
    img = matplotlib.image.imread(out)
    assert img.shape[:2] == (h, w) and w > 500 and h > 300
    assert img.std() > 0.01  # not a blank canvas


def test_svg_names_every_run(runs, tmp_path):
    out = tmp_path / "curves.svg"
    assert main([*runs, "-o", str(out)]) == 0
    text = out.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for d in runs:  # every legend labels the lines by run directory
        assert text.count(f">{d}<") == 4, d
    assert "learning rate" in text and "validation loss" in text and "tokens" in text


def test_errors(runs, tmp_path, capsys, monkeypatch):
    assert main([runs[0], "-o", str(tmp_path / "x.jpg")]) == 2
    assert "x.jpg: the file name must end in .png or .svg" in capsys.readouterr().err
    assert main([str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")]) == 2
    assert "nope: no metrics.jsonl" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the plot extra is not installed
    assert main([runs[0], "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["anetrain plot: error: plot needs matplotlib: pip install 'anetrain[plot]'"]
