"""Atomic file writes and safe path handling: nothing is ever half-written under its final name."""
from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from xpaste.errors import XPasteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    The final file gets the permissions a plain `open(final, "w")` would give (0666 less the umask), not
    mkstemp's private 0600, so outputs on a shared cluster stay readable as the user's umask says.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write via temp file + rename. The rename alone survives a killed process; `durable` also fsyncs
    so the content survives a power loss (skipped for the many small per-image files of a long run)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None, durable: bool = True) -> None:
    data = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False).encode("utf-8")
    write_bytes_atomic(path, data, durable)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise XPasteError("file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XPasteError(f"malformed json: {e}", path) from None


_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_name(name: str, max_len: int = 80) -> str:
    """A file-name-safe form of an arbitrary label: no separators, no NUL, no '..', bounded length.

    Not injective on its own: callers that need uniqueness append an id (see `category_dir_name`).
    """
    text = unicodedata.normalize("NFKC", str(name)).replace("\x00", "")
    text = _UNSAFE.sub("_", text).strip("._") or "_"
    return text[:max_len]


def resolve_inside(root: str | os.PathLike, relative: str | os.PathLike, what: str = "path") -> Path:
    """Join `relative` under `root` and refuse anything that escapes it (absolute paths, '..', links out)."""
    root = Path(root).resolve()
    rel = str(relative)
    if "\x00" in rel:
        raise XPasteError(f"{what} contains a NUL byte: {rel!r}", root)
    candidate = (root / rel).resolve()
    if candidate != root and root not in candidate.parents:
        raise XPasteError(f"{what} {rel!r} points outside {root}", root, "paths in data must be relative")
    return candidate


@contextmanager
def exclusive_lock(folder: str | os.PathLike, what: str = "folder") -> Iterator[Path]:
    """Hold an exclusive, non-blocking advisory lock on `folder` (file `folder/.xpaste.lock`, fcntl.flock).

    A second writer (another process, or another open in this one) is refused at once with an XPasteError
    naming the folder; the lock is released when the block ends or the process dies (the kernel drops it),
    so a killed run never leaves a stale lock behind.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".xpaste.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise XPasteError(f"another xpaste process is writing this {what}", folder,
                          "wait for it to finish, or use another output folder") from None
    try:
        yield lock_path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
