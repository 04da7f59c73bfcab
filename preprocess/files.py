"""Files written whole or not at all: a temp file in the same folder, then an atomic rename.

A crash (or kill -9) mid-write leaves the previous file, never half of a new one; every stage's
outputs (manifests, vocabularies, metrics, hypotheses, reports, presets) are written this way.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from preprocess.configs import write_error


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes via a temp file + rename so a crash never leaves a half-written file; a failed
    write (full disk) is one line naming ``path``, and the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write_bytes`` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_text_if_changed(path: str | os.PathLike, text: str) -> bool:
    """``atomic_write_text`` unless the file already holds exactly ``text``; True when it wrote.

    Re-running a finished stage then rewrites nothing: mtimes stay, and re-runs stay cheap.
    """
    path = Path(path)
    try:
        if path.stat().st_size == len(text.encode("utf-8")) and path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True
