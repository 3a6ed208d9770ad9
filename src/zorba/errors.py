"""The one exception type that reaches users as a single line and exit code 2."""

from __future__ import annotations

import tomllib
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: a file, an option, a model id. The CLI prints it and exits 2."""


def read_toml(path: str | Path, what: str) -> dict:
    """A TOML file as a dict; a missing or malformed file is one UserError line naming `what` it is."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
