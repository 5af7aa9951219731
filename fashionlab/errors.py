"""One exception type for every mistake a user can make.

The CLI prints a `UserError` as one line on stderr and exits 2; anything else is a bug
(exit 1, traceback only with --debug). Raise it with a message that names the problem
and, where there is one, the fix.
"""


class UserError(Exception):
    """Bad input, config or environment: reported in one line, exit code 2."""

    exit_code = 2


class DataError(UserError):
    """A data file is missing, corrupt, truncated, mismatched or the wrong data set."""


class SpecError(UserError):
    """A model spec or training config is invalid (unknown key, bad type, impossible shape)."""


class RunError(UserError):
    """A run folder is missing, unfinished or not a fashionlab run."""


class DivergedError(UserError):
    """The loss became NaN or infinite; the last good epoch was kept."""

    run_state = "diverged"
