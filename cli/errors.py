"""Errors a command reports to the user as a one-line message with exit code 1 (no traceback)."""


class UserInputError(ValueError):
    """Bad input from the user: a missing file, an unreadable image, a malformed row. The message names it."""
