"""The shared bearer token, read from a file on both ends (never from a flag or URL, so it stays
out of shell history, process listings, logs and summary.json)."""
from __future__ import annotations

from pathlib import Path


def read_token(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped); missing, empty or spaced is an error."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"token file {p} does not exist")
    token = p.read_text().strip()
    if not token:
        raise ValueError(f"token file {p} is empty")
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in token):
        raise ValueError(f"token file {p} must hold one line of printable ASCII without spaces "
                         "(it travels as gRPC metadata)")
    return token
