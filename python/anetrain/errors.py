"""User-facing errors: one line that names the file and the problem; CLIs exit non-zero on them."""


class UserError(Exception):
    """Bad input or environment (missing file, corrupt checkpoint, bad flag); no traceback shown."""


class DataError(UserError):
    """A token file or dataset directory that cannot be used."""


class CheckpointError(UserError):
    """A checkpoint that is corrupt, truncated, of another version, or does not match the run."""


def run_cli(prog: str, fn, argv) -> int:
    """Run a CLI body; a user error becomes one line on stderr and exit code 2 (no traceback)."""
    import sys

    try:
        return int(fn(argv) or 0)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
