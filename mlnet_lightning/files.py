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
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that takes a path: when the block ends, its file is
    flushed to the disk and renamed to `path`; if the block fails, it is removed. A failed write raises
    OSError naming `path`."""
    path = Path(path)
    try:
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.fchmod(descriptor, FILE_MODE)
        os.close(descriptor)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    temporary = Path(name)
    try:
        yield temporary
        with temporary.open("rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename in (None, str(temporary)):  # a failed write() names no file; the temporary means nothing
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w", **options: Any) -> Iterator[IO]:
    """A file to write `path`'s new content into (`open`'s mode and options), written whole as by
    `atomic_path`."""
    with atomic_path(path) as temporary, temporary.open(mode, **options) as file:
        yield file


def remove_temporaries(folder: str | Path) -> None:
    """Delete the temporary files that writers killed mid-write left in `folder` and below; only the
    folder's one writer may call this (another's temporary may be in use)."""
    for temporary in Path(folder).rglob(".*.part"):
        temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """`Path.write_text`, atomically."""
    with atomic_writer(path, "w", encoding="utf-8") as file:
        file.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """`Path.write_bytes`, atomically."""
    with atomic_writer(path, "wb") as file:
        file.write(data)
