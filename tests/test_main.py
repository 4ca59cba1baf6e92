"""python -m anetrain <command>: dispatch, the command list, one-line errors."""

from __future__ import annotations

from anetrain.__main__ import COMMANDS, main


def test_every_command_answers_help(capsys):
    for name in COMMANDS:
        try:
            code = main([name, "--help"])
        except SystemExit as e:  # argparse's --help
            code = e.code or 0
        assert code == 0, name
        assert "usage" in capsys.readouterr().out.lower(), name


def test_no_command_lists_them_and_an_unknown_one_is_one_line(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["anetrain: error: unknown command 'trian' (choose from train, sample, export, "
                   "eval, fuse, bench, dashboard, plot, probe)"]  # fmt: skip


def test_a_command_runs_with_its_arguments(tmp_path, capsys):
    assert main(["train", "--quiet", "--model", "tiny", "--steps", "2", "--out",
                 str(tmp_path / "r")]) == 0  # fmt: skip
    assert (tmp_path / "r" / "checkpoint.bin").is_file()
    assert main(["export", str(tmp_path / "r"), "--format", "llama2c", "-o",
                 str(tmp_path / "m.bin")]) == 0  # fmt: skip
    assert (tmp_path / "m.bin").stat().st_size > 0


def test_the_command_list_names_every_benchmark_and_export_format(capsys):
    from anetrain.bench.__main__ import BENCHES
    from anetrain.bench.__main__ import __doc__ as bench_banner

    main(["--help"])
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln[:2] == "  "}
    assert all(name in lines["bench"] for name in BENCHES)
    assert "{" + ",".join(BENCHES) + "}" in bench_banner
    assert "Hugging Face" in lines["export"] and "Hugging Face" in lines["sample"]
