"""Every user-facing error is a UserError (one line, exit 2) and keeps its older base class."""

from __future__ import annotations

import pytest

from anetrain.backends.ane import AneError
from anetrain.cli import run_cli
from anetrain.config import ConfigError
from anetrain.errors import CheckpointError, DataError, UserError
from anetrain.formats.tokenizer import TokenizerError
from anetrain.mil.errors import MilError


@pytest.mark.parametrize("cls, base", [(MilError, ValueError), (AneError, RuntimeError),
                                       (TokenizerError, ValueError), (ConfigError, ValueError),
                                       (DataError, Exception), (CheckpointError, Exception)])
def test_user_errors_keep_their_other_base(cls, base):
    assert issubclass(cls, UserError) and issubclass(cls, base)


@pytest.mark.parametrize("cls", [MilError, AneError, TokenizerError])
def test_run_cli_prints_one_line_for_subsystem_errors(cls, capsys):
    def body(argv):
        raise cls(f"{argv[0]}: broken")

    assert run_cli("prog", body, ["x.bin"]) == 2
    assert capsys.readouterr().err == "prog: error: x.bin: broken\n"


def test_run_cli_lets_programming_errors_through():
    def body(argv):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_cli("prog", body, [])
