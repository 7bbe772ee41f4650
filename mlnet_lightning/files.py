"""Files written whole or not at all: every file the project writes goes to a temporary file in its own
folder, is flushed to the disk and renamed over the old one, so that a reader, or a kill at any instant,
sees the old file or the new one, never a part. (A temporary file elsewhere, Python's and fsspec's
default, is copied over in place where it lands on another filesystem: TMPDIR on a cluster node.)"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0)
os.umask(_UMASK)
# What open() would give a new file (mkstemp's own is 0600).
FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w", **options: Any) -> Iterator[IO]:
    """A file to write `path`'s new content into (`open`'s mode and options): renamed to `path` when the
    block ends, removed if it fails. A failed write raises OSError naming `path`."""
    path = Path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        os.fchmod(descriptor, FILE_MODE)
        with os.fdopen(descriptor, mode, **options) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        if error.filename is None:  # a failed write() names no file
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """`Path.write_text`, atomically."""
    with atomic_writer(path, "w", encoding="utf-8") as file:
        file.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """`Path.write_bytes`, atomically."""
    with atomic_writer(path, "wb") as file:
        file.write(data)
