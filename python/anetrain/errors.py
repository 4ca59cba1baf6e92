"""User-facing errors: one line that names the file and the problem (cli.run_cli prints them)."""


class UserError(Exception):
    """Bad input or environment (missing file, corrupt checkpoint, bad flag); no traceback shown."""


class DataError(UserError):
    """A token file or dataset directory that cannot be used."""


class CheckpointError(UserError):
    """A checkpoint that is corrupt, truncated, of another version, or does not match the run."""



class TokenizerError(UserError, ValueError):
    """A tokenizer file that cannot be read, or a tokenizer that cannot do what was asked."""
