"""Credentials kept in files: read only from a file its owner alone may access."""

from __future__ import annotations

import stat
from pathlib import Path


def read_bearer_token(path: Path) -> str:
    """The token held in ``path`` (surrounding whitespace dropped).

    Refuses a file that group or others may access: the token is a credential. The error names the file,
    never its content.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"bearer token file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"bearer token file {path} is accessible by group or others ({stat.filemode(mode)}): chmod 600 it"
        )
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"bearer token file {path} cannot be read: {type(exc).__name__}") from None
    if not token or any(char.isspace() for char in token):
        raise ValueError(f"bearer token file {path} must hold one token, without spaces")
    return token
