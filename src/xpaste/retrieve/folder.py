"""Rank a local collection of images per category with CLIP (X-Paste Stage 1, web images).

The paper keeps crawled images that CLIP agrees with (`a photo of {name}`, score = 100 x cosine) and that
have a simple background. Here the "crawl" is any folder or list of files the user already has; the scorer
is passed in (anything with `embed_images` / `embed_texts`, e.g. `xpaste.score.clip.ClipScorer`), so this
module itself never imports torch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from xpaste.errors import XPasteError
from xpaste.imageio import read_rgb
from xpaste.io import resolve_inside
from xpaste.retrieve.filters import simple_background_fraction
from xpaste.score import PROMPT_TEMPLATE, prompt_for

log = logging.getLogger(__name__)

#: Extensions `list_images` picks up from a folder (compared lower-case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


class ImageTextEmbedder(Protocol):
    def embed_images(self, images: list[np.ndarray]) -> np.ndarray: ...
    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class Candidate:
    """One retrieved image for one category."""

    path: str
    score: float  # 100 x cosine(image, category text), the paper's CLIP score
    source: str = "folder"
    url: str = ""  # where the file came from; empty for local folders
    width: int = 0
    height: int = 0
    background_fraction: float | None = None  # set when the simple-background filter ran


@dataclass
class RetrievalResult:
    candidates: dict[int, list[Candidate]]  # category index -> best first
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images


@dataclass
class ImageListing:
    """The images of a folder or list file (`scan_images`), and the image files left out, with the reason."""

    paths: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _inside(real: Path, root: Path) -> bool:
    return real == root or root in real.parents


def scan_images(source: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageListing:
    """Image files of a folder (recursive) or of a list file, in a deterministic order, and what was skipped.

    Folder: files whose extension is in IMAGE_EXTENSIONS (any case), sorted by relative path. Hidden files
    and folders (leading '.', e.g. macOS '._x.jpg' resource forks, '.git') are not part of the collection.
    Symlinked files are followed when they resolve to a file inside `root` (default: `source` itself; the
    retrieve stage passes its --folder, so a category folder of links into a blob store elsewhere in the
    collection - the Hugging Face cache, DVC, git-annex layouts - is read as plain files). Skipped, each
    with its reason in `skipped` (never silently): a link resolving outside `root`, a dangling link, a
    symlinked folder (not descended: no cycles, no images listed twice).
    List file: one path per line relative to the list file's folder ('#' comments and blank lines
    skipped), kept in file order; a line pointing outside that folder raises XPasteError. Listed files
    are not opened here: a missing or broken one is reported by `rank_folder`.
    """
    source = Path(source)
    if source.is_dir():
        base = source.resolve()
        allowed = base if root is None else Path(root).resolve()
        if not _inside(base, allowed):
            raise XPasteError(f"image folder {source} is not inside {allowed}", source)
        found: list[Path] = []
        skipped: list[tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
            for d in list(dirnames):
                if not d.startswith(".") and os.path.islink(os.path.join(dirpath, d)):
                    skipped.append((os.path.join(dirpath, d), ("symlinked folder, not descended (link the files, "
                                                                "or pass the folder it points to)")))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and not os.path.islink(os.path.join(dirpath, d)))
            for name in filenames:
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                path = Path(dirpath) / name
                if path.is_symlink():
                    real = Path(os.path.realpath(path))
                    if not _inside(real, allowed):
                        skipped.append((str(path), f"symlink to {real} leaves {allowed}"))
                        continue
                    if not real.exists():
                        skipped.append((str(path), f"dangling symlink (its target {os.readlink(path)} does not exist)"))
                        continue
                    if not real.is_file():
                        skipped.append((str(path), f"symlink to {real}, which is not a file"))
                        continue
                found.append(path)
        return ImageListing(sorted(found, key=lambda p: p.relative_to(source).as_posix()),
                            sorted(skipped, key=lambda item: Path(item[0]).relative_to(source).as_posix()))
    if source.is_file():
        base = source.parent
        paths = []
        text = source.read_text(encoding="utf-8-sig")
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                paths.append(resolve_inside(base, line, what="image path"))
            except XPasteError as e:
                raise XPasteError(f"line {number}: {e.message}", source,
                                  "list files may only name images under their own folder") from None
        return ImageListing(paths)
    raise XPasteError("no such folder or list file", source)


def list_images(source: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """The image paths of `scan_images(source, root)`; what it skips is logged as one warning."""
    listing = scan_images(source, root)
    if listing.skipped:
        log.warning("%s: skipped %d image file(s): %s", source, len(listing.skipped),
                    "; ".join(f"{p}: {why}" for p, why in listing.skipped[:3]) +
                    (" ..." if len(listing.skipped) > 3 else ""))
    return listing.paths


def labelled_folder(root: str | os.PathLike, names: Sequence[str]) -> Path | None:
    """The category folder of a labelled collection: the first `root/<name>` that is a folder inside `root`.

    Names are data (category names, folder names): one that would leave `root` - '..' parts, an absolute
    path, a symlink (or symlinked parent) resolving outside `root` - or that is `root` itself ('', '.') is
    never used, whatever exists there (`xpaste.io.resolve_inside`). Returns the resolved folder, or None.
    """
    base = Path(root).resolve()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            continue
        try:
            folder = resolve_inside(base, name, "category folder")
        except XPasteError:
            continue
        if folder != base and folder.is_dir():
            return folder
    return None


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB: EXIF rotation applied, transparency put on white (what the
    background filter sees). Raises XPasteError as `xpaste.imageio.read_rgb`."""
    return read_rgb(path, background=(255, 255, 255))


def rank_folder(paths: Sequence[str | os.PathLike], category_texts: Sequence[str], scorer: ImageTextEmbedder,
                top_k: int, min_score: float | None = None, simple_background: float | None = None,
                batch_size: int = 32, progress: bool = True, template: str | None = PROMPT_TEMPLATE,
                source: str = "folder", urls: Sequence[str] | None = None) -> RetrievalResult:
    """Top `top_k` images per category by CLIP score, each image decoded and embedded once.

    category_texts: category names; each is scored as `prompt_for(name, template)` ("a photo of {name}",
        LVIS underscores become spaces); template=None uses the texts verbatim.
    min_score: keep only scores >= this (100 x cosine; the paper's cut-out bar is 21).
    simple_background: keep only images whose simple-background fraction is >= this (the paper uses 0.4).
    urls: optional origin of each path (e.g. the URLs a k-NN download came from), recorded in Candidate.url.
    Unreadable images never raise: they are listed in `skipped` with the reason. An image may be a
    candidate for several categories. Order: score descending, then path, so reruns are identical.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if urls is not None and len(urls) != len(paths):
        raise ValueError(f"got {len(urls)} urls for {len(paths)} paths")
    from tqdm import tqdm

    texts = [prompt_for(t, template) if template is not None else t for t in category_texts]
    kept: list[int] = []  # indices into `paths` of decoded images, in embedding order
    sizes: list[tuple[int, int]] = []
    fractions: list[float | None] = []
    chunks: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=len(paths), desc="retrieve", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        batch = []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                rgb = load_rgb(paths[i])
                if rgb.shape[0] == 0 or rgb.shape[1] == 0:
                    raise ValueError("image has no pixels")
            except Exception as e:  # noqa: BLE001 -- any broken file is skipped, never fatal
                skipped.append((str(paths[i]), f"{type(e).__name__}: {e}"))
                continue
            kept.append(i)
            sizes.append((rgb.shape[1], rgb.shape[0]))
            fractions.append(simple_background_fraction(rgb) if simple_background is not None else None)
            batch.append(rgb)
        if batch:
            chunks.append(np.asarray(scorer.embed_images(batch), np.float32))
        bar.update(min(batch_size, len(paths) - start))
    bar.close()

    candidates: dict[int, list[Candidate]] = {c: [] for c in range(len(texts))}
    if not kept or not texts:
        return RetrievalResult(candidates, skipped)
    image_emb = np.concatenate(chunks)
    text_emb = np.asarray(scorer.embed_texts(texts), np.float32)
    scores = 100.0 * image_emb @ text_emb.T  # (N images, C categories)
    names = np.array([str(paths[i]) for i in kept])
    passes = np.ones(len(kept), bool)
    if simple_background is not None:
        passes = np.array([f >= simple_background for f in fractions], bool)
    for c in range(len(texts)):
        col = scores[:, c]
        ok = passes & (col >= min_score) if min_score is not None else passes
        idx = np.flatnonzero(ok)
        order = idx[np.lexsort((names[idx], -col[idx]))][:top_k]  # last key is primary: score, then path
        candidates[c] = [
            Candidate(path=names[j], score=float(col[j]), source=source,
                      url="" if urls is None else str(urls[kept[j]]), width=sizes[j][0], height=sizes[j][1],
                      background_fraction=fractions[j])
            for j in order]
    return RetrievalResult(candidates, skipped)
