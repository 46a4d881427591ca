"""One check for the crash and fault tests: nothing is half-written under a final name."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def assert_complete_files(folder: Path, skip_names: tuple[str, ...] = (), skip_hidden_folders: bool = False) -> int:
    """Every file under `folder` but hidden files (temp files are hidden dot-files) reads back completely with
    PIL, json or pyarrow (not with xpaste); returns how many files were checked. `skip_hidden_folders` also
    leaves out everything inside hidden folders; `skip_names` leaves out files of those names."""
    import pyarrow.parquet as pq
    from PIL import Image

    n = 0
    for f in folder.rglob("*"):
        parts = f.relative_to(folder).parts if skip_hidden_folders else (f.name,)
        if not f.is_file() or any(p.startswith(".") for p in parts) or f.name in skip_names:
            continue
        n += 1
        if f.suffix in (".png", ".jpg"):
            with Image.open(f) as im:
                im.load()
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".parquet":
            pq.read_table(f)
    return n


def tree(root: Path) -> dict[str, str]:
    """Every entry under `root`: files by content hash, symlinks by target, folders by name (links not followed)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
