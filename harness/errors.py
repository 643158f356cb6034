"""Errors a user can act on: the CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a name, a file, an option); the message says what to do."""

    exit_code = 2
