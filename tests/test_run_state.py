"""RunState: every field of an edited checkpoint header is checked; old checkpoints still resume."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from anetrain.errors import CheckpointError
from anetrain.formats import checkpoint
from anetrain.train import main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v1_run"
PREFIX = struct.Struct("<8sIIQII")


def edit_header(path: Path, edit) -> None:
    """Rewrite a checkpoint's JSON header through edit(dict), with a valid header CRC (as a
    careful vandal would), keeping the body and its CRC."""
    data = path.read_bytes()
    magic, version, hlen, blen, bcrc, _ = PREFIX.unpack_from(data)
    body = data[len(data) - blen :]
    header = json.loads(data[PREFIX.size : PREFIX.size + hlen])
    edit(header)
    hbytes = json.dumps(header).encode()
    pad = (-(PREFIX.size + len(hbytes))) % 64
    prefix = PREFIX.pack(magic, version, len(hbytes), blen, bcrc, zlib.crc32(hbytes))
    path.write_bytes(prefix + hbytes + b"\0" * pad + body)


def _fixture_run(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    tokens = tmp_path / "tokens.bin"
    np.random.default_rng(0).integers(0, 97, 4000).astype("<u2").tofile(tokens)
    return run, tokens


def _set(path: str, value):
    """An edit that sets header[a][b]... = value for path 'a.b'."""

    def edit(h: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            h = h[p]
        h[last] = value

    return edit


EDITS = [
    ("model.hidden_dim", 3.5, "hidden_dim must be an integer"),
    ("model.dim", 2**40, "dim must be in 1..1048576"),
    ("model.n_heads", True, "n_heads must be an integer"),
    ("model.norm_eps", "1e-5", "norm_eps must be a finite number"),
    ("model.vocab_size", 98, "body size does not match"),
    ("adam_t", -1, "adam_t must be an integer >= 0"),
    ("adam_t", 99, "adam_t 99, step 6"),
    ("step", "6", "step must be an integer"),
    ("tokens", 1.5, "tokens must be an integer"),
    ("train.steps", 2, "adam_t 6, step 6"),
    ("train.lr", -1.0, "--lr must be > 0"),
    ("train.accum", 0.5, "accum must be an integer"),
    ("train.backend", "gpu", "unknown backend 'gpu'"),
    ("sampler.state.inc", "x", "sampler"),
    ("sampler.bit_generator", "MT19937", "sampler"),
    ("scaler.scale", float("nan"), "scaler"),
    ("scaler.clean", -3, "scaler"),
    ("data", 7, "data must be a string"),
    ("n_params", 5, "body size does not match"),
    ("has_optimizer", "yes", "body size does not match"),
    ("surprise", 1, "unknown checkpoint header fields ['surprise']"),
]


@pytest.mark.parametrize("field,value,message", EDITS, ids=[e[0] + "=" + repr(e[1]) for e in EDITS])
def test_an_edited_header_is_one_line_naming_file_and_field(tmp_path, field, value, message):
    run, _ = _fixture_run(tmp_path)
    path = run / "checkpoint.bin"
    edit_header(path, _set(field, value))
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path)
    text = str(e.value)
    assert str(path) in text and message in text and "\n" not in text, text


def test_an_edited_header_ends_the_cli_with_one_line(tmp_path, capsys):
    run, tokens = _fixture_run(tmp_path)
    edit_header(run / "checkpoint.bin", _set("model.hidden_dim", 3.5))
    before = (run / "checkpoint.bin").read_bytes()
    assert main(["--quiet", "--resume", str(run), "--steps", "8", "--data", str(tokens)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model config: hidden_dim must be an integer, got 3.5" in err[0]
    assert (run / "checkpoint.bin").read_bytes() == before


def test_the_unedited_fixture_loads(tmp_path):
    run, _ = _fixture_run(tmp_path)
    st = checkpoint.load(run / "checkpoint.bin").state
    assert (st.step, st.adam_t, st.tokens, st.backend) == (6, 6, 96, "cpu")
    assert st.train.ckpt_every == 3 and st.model.vocab_size == 97


def _params_sha(path: Path) -> str:
    ck = checkpoint.load(path, with_optimizer=False)
    return hashlib.sha256(ck.params.flat.tobytes()).hexdigest()


def test_a_checkpoint_written_before_run_state_resumes_identically(tmp_path):
    """The committed run (format 1, written before RunState) resumes to step 12 with the very
    numbers the code that wrote it produced."""
    run, tokens = _fixture_run(tmp_path)
    assert main(["--quiet", "--resume", str(run), "--steps", "12", "--data", str(tokens),
                 "--threads", "1", "--out", str(tmp_path / "to12")]) == 0  # fmt: skip

    def cols(path: Path) -> list[tuple]:
        rows = [json.loads(ln) for ln in path.read_text().splitlines()]
        return [(r["step"], r["loss"], r["lr"], r["tokens"], r["grad_norm"]) for r in rows]

    want = cols(FIXTURE / "metrics_to_12.jsonl")
    assert cols(tmp_path / "to12" / "metrics.jsonl") == want
    sha = (FIXTURE / "params_at_12.sha256").read_text().split()[0]
    assert _params_sha(tmp_path / "to12" / "checkpoint.bin") == sha
