"""The one base of errors meant for the user: the CLI prints their message on one line and exits 2."""


class UserError(RuntimeError):
    """A problem with the user's input, config, models or run (not a bug): one line, no traceback."""
