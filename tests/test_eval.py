"""python -m anetrain.eval: every target of a split once, the same figure as the train loop's
validation; a LoRA run on JSONL text made from the embedded stories lowers validation loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anetrain.eval import main as eval_main
from anetrain.formats.data import embedded_dataset
from anetrain.formats.tokenizer import Tokenizer
from anetrain.train import main as train_main


def _train(*argv) -> None:
    assert train_main(["--backend", "cpu", "--quiet", "--threads", "1", *map(str, argv)]) == 0


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _eval(capsys, *argv) -> dict:
    capsys.readouterr()
    assert eval_main([*map(str, argv), "--json", "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_reports_the_runs_last_val_loss_over_every_token(tmp_path, capsys):
    _train("--model", "tiny", "--steps", 6, "--out", tmp_path / "r")
    last = _rows(tmp_path / "r")[-1]
    got = _eval(capsys, tmp_path / "r")  # the data the run trained on, its valid split
    assert got["loss"] == last["val_loss"]
    val = np.fromfile(embedded_dataset() / "val.bin", np.uint16)
    assert got["tokens"] == val.size - 1  # every target of the split, once
    assert got["perplexity"] == pytest.approx(np.exp(got["loss"]))
    first = _eval(capsys, tmp_path / "r", "--batches", 1, "--split", "train")
    assert first["tokens"] == 64  # --batches 1: one window of seq 64


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert eval_main([str(tmp_path / "nothing")]) == 2
    assert "no such" in capsys.readouterr().err
    _train("--model", "tiny", "--steps", 1, "--out", tmp_path / "r")
    assert eval_main([str(tmp_path / "r"), "--split", "test"]) == 2
    assert "has no test split" in capsys.readouterr().err
    assert eval_main([str(tmp_path / "r"), "--seq", "1000"]) == 2
    assert "--seq 1000 must be in 1..64" in capsys.readouterr().err


def _stories_jsonl(d: Path, n_train: int, n_valid: int) -> None:
    """{"text"} records: the embedded stories decoded back to text (split at each BOS)."""
    data = embedded_dataset()
    tok = Tokenizer.load(data / "tokenizer.bin")
    d.mkdir()
    for name, src, n in (("train", "train.bin", n_train), ("valid", "val.bin", n_valid)):
        ids = np.fromfile(data / src, np.uint16)[:200_000]
        starts = np.flatnonzero(ids == tok.bos_id)[: n + 1]
        texts = [tok.decode_all(ids[a:b]).strip() for a, b in zip(starts, starts[1:])]
        with open(d / f"{name}.jsonl", "w") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")


def test_lora_on_story_text_records_lowers_validation_loss(tmp_path, capsys):
    _train("--model", "tiny", "--steps", 60, "--out", tmp_path / "base")
    _stories_jsonl(tmp_path / "text", 300, 30)
    before = _eval(capsys, tmp_path / "base", "--data", tmp_path / "text")
    _train("--init", tmp_path / "base", "--data", tmp_path / "text", "--lora-rank", 8,
           "--lora-targets", "q,k,v,o,gate,up,down", "--lr", "5e-3", "--steps", 40,
           "--eval-every", 20, "--out", tmp_path / "lora")  # fmt: skip
    rows = _rows(tmp_path / "lora")
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < vals[0] < before["loss"] - 0.02, (before["loss"], vals)
    after = _eval(capsys, tmp_path / "lora")  # the run's data (JSONL, its tokenizer), merged model
    assert after["loss"] == vals[-1]
    assert after["tokens"] == before["tokens"]
