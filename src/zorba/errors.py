"""The one exception type that reaches users as a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a file, an option, a model id. The CLI prints it and exits 2."""
