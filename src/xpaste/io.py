"""Atomic file writes and safe path handling: nothing is ever half-written under its final name."""
from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import stat
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from xpaste.errors import XPasteError


#: errno values of environment faults (full disk, quota, read-only, permissions, open-file limits).
_FAULT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE)


#: errno values that, raised while copying, can only concern the file being written.
_DESTINATION_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    The one atomic-write helper: every file xpaste writes goes through it (directly or through the
    `write_*_atomic` helpers below), so a killed or failed write never leaves a half-written file under its
    final name, only a hidden `.<name>.*.tmp` that is removed on failure (readers skip dot-files). The one
    exception is by design: the pool's append-only data shards, whose bytes count only once an atomically
    written index part lists them (`xpaste.pool.writer`; errors there are named with `naming_os_errors`).
    The final file gets the permissions a plain `open(final, "w")` would give (0666 less the umask), not
    mkstemp's private 0600, so outputs on a shared cluster stay readable as the user's umask says.

    Raises: OSError as raised by the system, with `filename` set to `final` (or its folder when the
    temporary file cannot be created) where the system named no file or only the temporary one, so the
    CLI's one-line message names the file the user asked for (e.g. ENOSPC, EROFS, EACCES).
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as e:
        raise _named(e, final.parent, None) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _named(e, final, tmp_path) from e
        raise


def _named(e: OSError, path: Path, tmp: Path | None) -> OSError:
    """`e` itself if it names a file other than the temporary one, else the same kind of error naming `path`.

    Writers that wrap the C library (pyarrow) raise OSError without an errno; the system's message text of
    the common environment faults identifies those, so they get their errno back here."""
    if e.errno is None:
        text = str(e)
        code = next((c for c in _FAULT_ERRNOS if os.strerror(c) in text), None)
        return e if code is None else OSError(code, os.strerror(code), str(path))
    if e.filename is not None and (tmp is None or str(e.filename) != str(tmp)):
        # shutil's copy names the SOURCE first and the temporary destination second (filename2), also for
        # faults that can only be the destination's (a full disk): name the file the user asked for
        if not (tmp is not None and e.filename2 is not None and str(e.filename2) == str(tmp)
                and e.errno in _DESTINATION_ERRNOS):
            return e
    try:
        return type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path))
    except TypeError:  # an OSError subclass with another constructor
        return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))


@contextmanager
def naming_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError that names no file (a write, flush or close on an open file) as the same error naming
    `path`, so the CLI's one-line message says which file; for writers that keep a file open (append logs)."""
    try:
        yield
    except OSError as e:
        named = _named(e, Path(path), None)
        if named is e:
            raise
        raise named from e


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write via temp file + rename. The rename alone survives a killed process; `durable` also fsyncs
    so the content survives a power loss (skipped for the many small per-image files of a long run)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())


def write_parquet_atomic(path: str | os.PathLike, table: Any, durable: bool = False) -> None:
    """Write a pyarrow Table as one Parquet file, atomically (see `atomic_path`).

    The file is encoded in memory first and written with Python's own file I/O, so a full disk or a
    read-only folder raises an OSError with its errno and the final path (pyarrow's own writer raises
    errors without an errno). Tables written this way are shards (thousands of rows), not whole datasets.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(path, sink.getvalue().to_pybytes(), durable)


def copy_file_atomic(src: str | os.PathLike, dst: str | os.PathLike, durable: bool = False) -> None:
    """Copy the bytes of `src` to `dst` atomically (see `atomic_path`); `dst` gets umask permissions, not
    `src`'s mode. Raises FileNotFoundError if `src` is missing."""
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())


def encode_image(array: Any, ext: str = ".png", png_compression: int = 1, jpeg_quality: int = 95) -> bytes:
    """Encode an (H, W) uint8 mask, (H, W, 3) uint8 RGB or (H, W, 4) uint8 RGBA image as PNG or JPEG bytes.

    Channel order in is RGB(A) (xpaste's convention, design.md); OpenCV's BGR order is handled here.
    Raises ValueError for another dtype/shape or an extension OpenCV cannot encode.
    """
    import cv2
    import numpy as np

    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"encode_image needs uint8 (H,W), (H,W,3) or (H,W,4), got {array.dtype} {array.shape}")
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    params = ([cv2.IMWRITE_PNG_COMPRESSION, png_compression] if ext == ".png" else
              [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else [])
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(array), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {ext} image")
    return buf.tobytes()


def write_image_atomic(path: str | os.PathLike, array: Any, durable: bool = False) -> None:
    """Encode `array` (see `encode_image`; the format follows the file extension) and write it atomically."""
    write_bytes_atomic(path, encode_image(array, Path(path).suffix or ".png"), durable)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None, durable: bool = True) -> None:
    data = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False).encode("utf-8")
    write_bytes_atomic(path, data, durable)


class _NonStandardToken(ValueError):
    def __init__(self, token: str):
        super().__init__(token)
        self.token = token


def _refuse_constant(token: str):
    raise _NonStandardToken(token)


_TOKEN_AT = re.compile(rb"[\[:,]\s*(-?Infinity|NaN)\b")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a json file (datasets, predictions, stats, pool.json, run records), refusing the NaN / Infinity /
    -Infinity tokens Python's json accepts by default.

    Standard JSON (RFC 8259) has no such numbers; Python writes them for float('nan') unless allow_nan=False,
    and a value read back as NaN later breaks writing (`allow_nan=False`) or comparisons. Uses json's
    `parse_constant` hook, which costs nothing on files without the tokens. Raises XPasteError naming the file
    (and the token with its line) for a missing file, a folder, malformed json or such a token.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise XPasteError("file not found", path) from None
    except IsADirectoryError:
        raise XPasteError("expected a json file, got a folder", path) from None
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except _NonStandardToken as e:
        m = _TOKEN_AT.search(data)
        where = f" (line {data.count(10, 0, m.start(1)) + 1})" if m else ""  # 10: b"\n"
        raise XPasteError(f"the json contains the non-standard number {e.token}{where}", path,
                          "standard JSON has no NaN/Infinity: write null or a finite number instead") from None
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


def _real(path: str | os.PathLike) -> Path:
    """`path` made absolute with every symlink resolved (also in a not-yet-existing tail's parents)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))  # hard links too
    except OSError:
        return a == b


def refuse_overlap(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], out_is_file: bool = False,
                   writes: tuple[str, ...] | None = None, flag: str = "--out") -> None:
    """Refuse an output path that would overwrite, delete or write into one of a command's inputs.

    The one check every writing command makes before it writes or deletes anything. `inputs` maps a label
    ("the dataset json (--dataset)") to an input file or folder (None entries are ignored); paths are compared
    with every symlink resolved (hard-linked files count as equal). Refused, in one XPasteError line naming
    both paths:

    * `out` is an input (the same file or folder);
    * `out` lies inside an input folder (the command would write into it);
    * a folder `out` contains an input folder (a rerun, `--overwrite` or `--fresh` could delete or mix it);
    * a folder `out` contains an input file: always when `writes` is None; otherwise only when the file is,
      or lies inside, one of the entries `writes` names (files and folders the command writes or replaces
      under `out`, e.g. ("images", "annotations.json")), which are resolved themselves, so a symlinked
      `out/images` pointing at an input folder is refused too.
    """
    o = _real(out)
    targets = [_real(o / w) for w in (writes or ())]
    for label, raw in inputs.items():
        if raw is None:
            continue
        p = _real(raw)
        is_dir = p.is_dir()
        why = None
        if _same_file(o, p):
            why = f"is {label}"
        elif is_dir and _within(o, p):
            why = f"is inside {label}"
        elif not out_is_file and _within(p, o) and (is_dir or writes is None):
            why = f"contains {label}"
        else:
            for t in targets:
                if _same_file(t, p) or _within(p, t):
                    why = f"would overwrite {label}" if not is_dir else f"would write over {label}"
                    break
                if is_dir and _within(t, p):
                    why = f"would write into {label}"
                    break
        if why is not None:
            shown = "" if os.fspath(raw) == os.fspath(out) else f" {raw}"  # the same words need no repeating
            raise XPasteError(f"{flag} {why}{shown}", out,
                              f"choose {'an output file' if out_is_file else 'an output folder'} outside the "
                              "inputs; nothing was written")


def _hidden(name: str) -> bool:
    return name.startswith(".")


def check_output(path: str | os.PathLike, kind: str = "folder", writes: tuple[str, ...] | None = None,
                 what: str = "--out", own: tuple[str, ...] = ()) -> None:
    """Refuse an output path the command could not write, or could only write by mixing with foreign content.

    The one check of an output path's shape, made by every writing command before any work (before models
    load, datasets parse or anything is written), beside `refuse_overlap` (called after it, so an overlap is
    named as such). `kind` is "folder" (the command writes files into `path`) or "file" (it writes `path`).
    Refused, in one XPasteError line naming the path (the command then writes nothing):

    * a parent of `path` is an existing file (or another non-folder): `path` lies under a file;
    * `kind` "folder" and `path` is an existing file (or a broken symbolic link);
    * `kind` "file" and `path` is an existing folder;
    * `kind` "folder", `writes` given, and `path` is a folder holding an entry that is none of `writes` (names or
      `fnmatch` patterns of what the command writes there): its outputs would mix with files it did not make.
      Hidden entries (".DS_Store", locks, temporary files) are not counted, and a folder holding one of `own`
      (a marker only this command writes, e.g. a pool's "pool.json") is the command's own: a rerun or resume
      is never refused for files the user added beside its outputs. Entries named in `writes` are left to the
      command's own rules (an earlier export, a pool it did not start, ...).
    """
    if kind not in ("folder", "file"):
        raise ValueError(f"kind must be 'folder' or 'file', got {kind!r}")
    p = Path(os.fspath(path))  # not normalised: 'file/../x' lies under 'file' for the system too
    new = "give a new folder" if kind == "folder" else "name a new file"
    if not os.path.lexists(p):
        for parent in p.parents:
            if os.path.lexists(parent):
                if not parent.is_dir():
                    raise XPasteError(f"{what} lies under {parent}, which is a file, not a folder", path,
                                      f"{new} whose parents are folders; nothing was written")
                return
        return
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:  # a symbolic link to nothing
        raise XPasteError(f"{what} is a broken symbolic link", path,
                          f"remove the link or {new}; nothing was written") from None
    if kind == "file":
        if stat.S_ISDIR(mode):
            raise XPasteError(f"{what} is a folder, not a file", path,
                              f"name a file, e.g. {os.path.join(os.fspath(path), 'out.json')}; nothing was written")
        return
    if not stat.S_ISDIR(mode):
        raise XPasteError(f"{what} is an existing file, not a folder", path,
                          "give a new or empty folder; the file was left as it is, nothing was written")
    if writes is None or any(os.path.lexists(p / name) for name in own):
        return
    foreign = sorted(name for name in os.listdir(p)
                     if not _hidden(name) and not any(fnmatch.fnmatchcase(name, w) for w in writes))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise XPasteError(f"{what} is a folder holding {shown}, which this command does not write", path,
                          "give a new or empty folder (its outputs would mix with files it did not make); "
                          "nothing was written")
