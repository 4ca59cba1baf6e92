"""The checkout: every shell script answers --help; run outputs (runs/, out/) are git-ignored."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

SHELL_SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
# what a script could run to do its work: each stub only records that it was called
STUBBED_TOOLS = ("curl", "wget", "python", "python3", "tar", "git")


def test_the_glob_finds_the_shell_scripts():
    names = {p.name for p in SHELL_SCRIPTS}
    assert {"build_embedded_data.sh", "download_stories.sh", "resume.sh"} <= names


def _stub_tools(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    for tool in STUBBED_TOOLS:
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexit 1\n')
        stub.chmod(0o755)


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_answers_help_and_does_nothing_else(tmp_path, script, flag):
    cwd, tmp, log = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "called.log"
    cwd.mkdir()
    tmp.mkdir()
    _stub_tools(tmp_path / "bin", log)
    env = dict(os.environ)
    env.update(
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHON=str(tmp_path / "bin" / "python3"),
        TMPDIR=str(tmp),
        ANETRAIN_MODELS_DIR=str(tmp_path / "models"),
        ANETRAIN_TINYSTORIES_DIR=str(tmp_path / "tinystories"),
    )
    r = subprocess.run(["bash", str(script), flag], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "usage:" in r.stdout.lower() and script.name in r.stdout, r.stdout
    assert len(r.stdout.strip().splitlines()) >= 2, r.stdout  # the purpose and the usage
    assert not log.exists(), log.read_text()  # nothing downloaded, built or trained
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []
    assert not (tmp_path / "models").exists() and not (tmp_path / "tinystories").exists()


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs git and a git checkout")  # fmt: skip
@pytest.mark.parametrize("path", ["runs/tiny/checkpoint.bin", "out/metrics.jsonl"])
def test_run_outputs_are_git_ignored(path):
    r = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], timeout=30)
    assert r.returncode == 0, f"{path} is not ignored by .gitignore"


def test_no_test_names_the_run_output_directories():
    """Tests write their runs under tmp_path (--out), never to the default out/ or to runs/."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path == Path(__file__).resolve():  # the git-ignore test above names them as data
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        joined = {id(n.right) for n in ast.walk(tree)  # `tmp_path / "out"`: under a base
                  if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}  # fmt: skip
        for node in ast.walk(tree):
            value = node.value if isinstance(node, ast.Constant) else None
            if id(node) in joined:
                continue
            if isinstance(value, str) and re.match(r"(\./)?(out|runs)(/|$)", value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {value!r}")
    assert found == []
