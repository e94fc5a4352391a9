"""The one error type users see: the CLI prints its message on one line and exits with code 2."""


class MvosError(Exception):
    """A problem with the user's input or environment, explained in one line."""
