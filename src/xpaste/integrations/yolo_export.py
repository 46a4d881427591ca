"""COCO / LVIS -> ultralytics YOLO-seg export: layout, label paths and the exact mask -> polygon conversion.

ultralytics is AGPL-3.0, so this module is an optional extra (`pip install 'xpaste[ultralytics]'`) and is
never imported by `xpaste/__init__.py` (checked against ultralytics 8.4.190).

Rules, each taken from ultralytics itself:

* Label paths: ultralytics finds an image's label with `ultralytics.data.utils.img2label_paths`, which replaces
  the LAST `/images/` component of the image path with `/labels/` and the extension with `.txt`. The exporter
  calls that very function on the path it writes each image to, so a `file_name` such as "images/a.png" or
  "x/images/b.jpg" gets its label exactly where ultralytics will look (here: next to the image, in a
  `labels/` sibling of the inner `images/` folder). Two images whose label paths coincide ("a.png" and "a.jpg"
  in one folder, the same file_name twice) and images ultralytics never lists (an extension outside
  `IMG_FORMATS`, a hidden file or folder, which its `**/*.*` glob skips) are refused in one line before
  anything is written.
* Polygons: one per instance, traced by `xpaste.ops.polygons.mask_to_polygon` (its rules are ultralytics':
  `polygon2mask` pixels, holes and separate parts bridged into one polygon, thin objects kept; see there;
  re-exported here under its old name). Every annotation is first rasterised the pycocotools way
  (`decode_annotation_mask`) and the polygon is traced from that mask, so polygon, compressed-RLE and
  uncompressed-RLE sources all export to the pixels pycocotools gives them.
"""
from __future__ import annotations

import os
import posixpath
import shlex
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from xpaste.data.coco import decode_annotation_mask, load_coco
from xpaste.errors import XPasteError
from xpaste.imageio import image_size
from xpaste.io import check_output, copy_file_atomic, refuse_overlap, resolve_inside, write_bytes_atomic
from xpaste.ops.polygons import mask_to_polygon, usable_polygons


# ----------------------------------------------------------------------------- annotations -> one polygon
def annotation_polygon(ann: dict, height: int, width: int) -> tuple[np.ndarray, bool]:
    """(polygon, traced) for one COCO annotation: its pycocotools mask traced by `mask_to_polygon` (traced=True).

    A polygon annotation that pycocotools rasterises to no pixel (a line drawn as a collinear polygon) keeps
    the points of its usable parts instead (traced=False; parts of fewer than 3 points left out by the rule of
    `xpaste.ops.polygons.usable_polygons`, as on load; several parts joined by ultralytics'
    `merge_multi_segment`, as its COCO converter does), so ultralytics still sees the line. Raises ValueError
    when the segmentation is missing or malformed (`decode_annotation_mask`), or is an RLE with no pixel.
    """
    poly = mask_to_polygon(decode_annotation_mask(ann, height, width))
    if poly is not None:
        return poly, True
    seg = ann.get("segmentation")
    parts = [p.reshape(-1, 2) for p in usable_polygons(seg)[0]] if isinstance(seg, list) else []
    if not parts:
        raise ValueError(f"annotation {ann.get('id', '?')}: its mask is empty")
    if len(parts) > 1:
        from ultralytics.data.converter import merge_multi_segment

        parts = [np.concatenate(merge_multi_segment([p.reshape(-1).tolist() for p in parts]), axis=0)]
    return parts[0].astype(np.float32), False  # usable parts have >= 3 points


# ----------------------------------------------------------------------------- layout
def _relative_name(file_name: object) -> str:
    """`file_name` normalised to a relative posix path ultralytics will list, or an XPasteError."""
    from ultralytics.data.utils import IMG_FORMATS

    if not isinstance(file_name, str) or not file_name:
        raise XPasteError(f"image file_name {file_name!r} is not a path")
    rel = posixpath.normpath(file_name)
    parts = rel.split("/")
    if rel.startswith("/") or parts[0] == "..":
        raise XPasteError(f"image file_name {file_name!r} points outside the images folder",
                          hint="file_name must be relative to --images")
    if any(p.startswith(".") for p in parts):
        raise XPasteError(f"image file_name {file_name!r} has a hidden file or folder, which ultralytics' image "
                          "search (glob **/*.*) never lists", hint="rename it in the dataset and on disk")
    if parts[-1].rpartition(".")[2].lower() not in IMG_FORMATS or "." not in parts[-1]:
        raise XPasteError(f"image file_name {file_name!r}: ultralytics only reads the extensions "
                          f"{', '.join(sorted(IMG_FORMATS))}", hint="convert the image, e.g. to .png")
    return rel


def plan_layout(file_names: list, splits: list[str], out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(image path, label path) under `out_dir` for each image, as ultralytics will pair them.

    The image goes to out/images/<split>/<file_name>; its label is what ultralytics' own `img2label_paths`
    gives for that path. Raises XPasteError, before anything is written, for a file_name ultralytics would not
    list (`_relative_name`) and when two images would share an image or label file.
    """
    from ultralytics.data.utils import img2label_paths

    base = Path(out_dir).resolve()  # data.yaml's `path`: ultralytics lists the images under it
    images = [base / "images" / split / _relative_name(name) for name, split in zip(file_names, splits)]
    labels = [Path(p) for p in img2label_paths([str(p) for p in images])]
    owner: dict[Path, str] = {}
    for name, image, label in zip(file_names, images, labels):
        for path in (image, label):
            if path in owner:
                raise XPasteError(f"images {owner[path]!r} and {name!r} would share the file "
                                  f"{path.relative_to(base)} in the YOLO layout", base,
                                  "ultralytics pairs an image with <name without extension>.txt: give one of "
                                  "them another name")
            owner[path] = name
    return list(zip(images, labels))


def _duplicate_rows(lines: list[str]) -> int:
    """How many label rows ultralytics' `verify_image_label` drops as duplicates: rows with the same class and
    box whose polygons are the same too (8.4.190: distinct polygons sharing a class and box are kept). Equal
    6-decimal text is equal float32 values and vice versa, so equal lines are exactly those rows."""
    return len(lines) - len(set(lines))


def _place(src: Path, dst: Path) -> None:
    """Hard-link the image (no copy of a large dataset); copy when linking is impossible (other device).

    Both are atomic (a link appears whole; `copy_file_atomic` renames a complete copy), so an image present
    under its final name is complete. Faults name `dst` (a full disk while copying included)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        copy_file_atomic(src, dst)


def _placed(src: Path, dst: Path) -> bool:
    """True when an earlier, interrupted run of the same export already placed `src` at `dst`."""
    try:
        return os.path.samefile(src, dst) or (dst.is_file() and dst.stat().st_size == src.stat().st_size)
    except OSError:
        return False


#: The settings of the export in --out (written before the first image): a rerun with the same settings resumes.
MARKER = ".xpaste-export.json"


def _settings(dataset_json: Path, images_dir: Path, split: str, val_fraction: float, seed: int) -> dict:
    import hashlib

    digest = hashlib.sha256()
    with open(dataset_json, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"dataset_sha256": digest.hexdigest(), "images": str(images_dir.resolve()), "split": split,
            "val_fraction": float(val_fraction), "seed": int(seed)}


def _prepare_out(out: Path, settings: dict, overwrite: bool, again: str) -> bool:
    """Make `out` ready for this export; True when it resumes an interrupted export with the same settings.

    A non-empty images/ or labels/ is replaced with `overwrite` (never an input: `refuse_overlap` ran before),
    resumed when `out`'s settings marker matches, and refused in one line otherwise."""
    import json

    used = [sub for sub in ("images", "labels")
            if (out / sub).is_symlink() or ((out / sub).is_dir() and any((out / sub).iterdir()))]
    if used and not overwrite:
        try:
            previous = json.loads((out / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous == settings:
            return True
        what = ("an export of another dataset or with other settings" if previous is not None else
                "files from another tool or an older xpaste")
        raise XPasteError(f"{' and '.join(s + '/' for s in used)} already hold {what}", out,
                          "pick a new --out, or replace them (stale labels and ultralytics' .cache files would "
                          f"otherwise mix with the new export): {again} --fresh")
    for sub in used:
        if (out / sub).is_symlink():
            (out / sub).unlink()  # the link only, never what it points to
        else:
            shutil.rmtree(out / sub)
    write_bytes_atomic(out / MARKER, json.dumps(settings, indent=1).encode("utf-8"))
    return False


# ----------------------------------------------------------------------------- train / val split
#: How the val split is drawn; recorded in the settings marker with a digest of the split itself.
SPLIT_RULE = "grouped by source image: every copy of one source image, and the source itself, on one side"


def source_groups(images: list[dict]) -> list[int]:
    """The source group of each image (0, 1, ... in order of first appearance): images that share a source.

    An image's source is its `source_file_name` (written by `xpaste augment` on every copy) when present, else
    its own `file_name`. An image whose `file_name` is another image's source joins that group, so the
    original and its copies are one group when a dataset mixes them, and so are copies of copies. Names are
    compared as normalised posix paths. Without source fields every image is its own group.
    """
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        root = name
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[name] != root:  # path compression
            parent[name], name = root, parent[name]
        return root

    def key(name: object) -> str:
        return posixpath.normpath(name) if isinstance(name, str) and name else repr(name)

    nodes = []
    for info in images:
        own = key(info.get("file_name"))
        source = info.get("source_file_name")
        if isinstance(source, str) and source:
            a, b = find(own), find(key(source))
            if a != b:
                parent[a] = b
        nodes.append(own)
    ids: dict[str, int] = {}
    return [ids.setdefault(find(node), len(ids)) for node in nodes]


def split_by_source(images: list[dict], val_fraction: float, seed: int) -> tuple[list[bool], str | None]:
    """(is_val per image, note): the train / val split, grouped by source image: every copy of one source
    image, and the source itself, on one side (`source_groups` says which images share a source).

    The target is round(val_fraction x images). The groups, in order of first appearance, are shuffled by
    `numpy.random.default_rng(seed).permutation`; in that order each group joins val while it fits the
    target; then, if val is still short, the first remaining group that brings val strictly closer to the
    target joins it (never the last group left in train). Val is thus within one group of the target. Without
    source fields each image is a group and the split is the one of earlier xpaste versions (the first
    `target` images of the seeded permutation). `note` is one line when grouping makes the split differ from
    the asked fraction by much (no val at all, no train, or more than one image and 10 % off the target),
    else None.
    """
    n = len(images)
    target = int(round(val_fraction * n))
    if not target:
        return [False] * n, None
    group = source_groups(images)
    sizes = Counter(group)
    order = [int(g) for g in np.random.default_rng(seed).permutation(len(sizes))]
    val: set[int] = set()
    n_val = 0
    for g in order:
        if n_val + sizes[g] <= target:
            val.add(g)
            n_val += sizes[g]
    if n_val < target and len(val) < len(sizes) - 1:
        best = min((g for g in order if g not in val), key=lambda g: abs(n_val + sizes[g] - target))
        if abs(n_val + sizes[best] - target) < target - n_val:
            val.add(best)
            n_val += sizes[best]
    note = None
    if n_val == 0 or n_val == n or abs(n_val - target) > max(1.0, 0.1 * target):
        what = ("no val split (val = train)" if n_val == 0 else "no train images" if n_val == n else
                f"val holds {n_val} of {n} images ({n_val / n:.0%})")
        note = (f"export-yolo: note: {what} where --val-fraction {val_fraction:g} asks for {target} of {n}: "
                f"images are split by source image, and the {n} come from {len(sizes)} source "
                f"image{'s' if len(sizes) != 1 else ''} of up to {max(sizes.values())} images each")
    return [g in val for g in group], note


def _split_digest(file_names: list, splits: list[str]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps([[str(f), s] for f, s in zip(file_names, splits)]).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- exporter
def export_yolo_seg(dataset_json: str | os.PathLike, images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    split: str = "train", val_fraction: float = 0.0, seed: int = 0,
                    overwrite: bool = False) -> Path:
    """Write a COCO / LVIS dataset (e.g. `xpaste augment` output) in the YOLO-seg layout; returns data.yaml.

    out/images/<split>/<file_name> (hard links, or copies), one label file per image where ultralytics'
    `img2label_paths` looks for it (`plan_layout`), with one line `class x1 y1 x2 y2 ...` per instance
    (coordinates normalised by the image's width / height to [0, 1], 6 decimals; polygon from
    `annotation_polygon`), and out/data.yaml. Classes are 0..K-1 in category-id order (`names` keeps the category
    names). Crowd annotations are skipped (YOLO has no ignore regions), as are annotations without a usable
    mask (`annotation_polygon`); each skip is counted by reason in the printed summary. Images without
    instances get an empty label file (background images). With `val_fraction` in (0, 1) a seeded random
    share of the images goes to images/val, else `val` points at `split`. The split is grouped by source
    image: every copy of one source image, and the source itself, on one side (`split_by_source`: an image's
    source is its `source_file_name`, as `xpaste augment` writes it, else its own file_name), so augmented
    copies never leak into val; val is as close to the fraction as whole groups allow, and one printed line
    says when that is far from the asked fraction (e.g. a dataset of one source image). Raises ValueError for a bad
    `val_fraction` and XPasteError (before writing anything) for an image ultralytics could not pair with its
    label, a missing image, an image whose displayed size (EXIF orientation applied, as ultralytics reads it)
    is not the dataset's width x height, an `out` that overlaps an input (`xpaste.io.refuse_overlap`: it is,
    lies inside or contains the images folder, or would overwrite the dataset json or an image), or a non-empty
    images/ or labels/ without `overwrite` that is not an interrupted export with the same settings.

    Resumable: the settings (dataset json content, images folder, split, val_fraction, seed, the split rule
    and a digest of the resulting train / val assignment, so that a changed split rule never resumes into a
    different split) are written to out/.xpaste-export.json before the first image; a rerun with the same
    settings after a crash, a full disk or Ctrl-C keeps the images and labels already written completely and
    writes the rest, ending with the files of an uninterrupted run. `overwrite` never deletes an input (the
    overlap is refused first).
    """
    out = Path(out_dir)
    refuse_overlap(out, {"the dataset json (--dataset)": dataset_json, "the images folder (--images)": images_dir},
                   writes=("images", "labels", "data.yaml", MARKER))
    check_output(out, writes=("images", "labels", "data.yaml"), own=(MARKER,))
    dataset = load_coco(dataset_json)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not split or "/" in split or "\\" in split or split.startswith(".") or split == "val" and val_fraction:
        raise XPasteError(f"split name {split!r} is not usable", hint="a plain folder name other than 'val'")
    cat_ids = sorted(int(c["id"]) for c in dataset.categories)
    class_of = {c: i for i, c in enumerate(cat_ids)}
    names = {i: str(dataset.category_by_id[c]["name"]) for i, c in enumerate(cat_ids)}

    images = list(dataset.images)
    is_val, note = split_by_source(images, val_fraction, seed)
    splits = ["val" if v else split for v in is_val]
    n_val = sum(is_val)
    layout = plan_layout([info["file_name"] for info in images], splits, out)
    sources = []
    for info in images:
        src = resolve_inside(images_dir, info["file_name"], "file_name")
        if not src.is_file():
            raise XPasteError("image file not found", src)
        shown, stated = image_size(src), (int(info["width"]), int(info["height"]))
        if shown != stated:  # ultralytics scales the normalised label by the image as displayed
            raise XPasteError(f"image is {shown[0]}x{shown[1]} as displayed (EXIF orientation applied) but the "
                              f"dataset says {stated[0]}x{stated[1]}", src,
                              "fix width/height in the dataset (or the image): the labels would not fit it")
        sources.append(src)
    again = " ".join(shlex.quote(str(w)) for w in (
        "xpaste", "export-yolo", "--dataset", dataset_json, "--images", images_dir, "--out", out_dir,
        "--split", split, "--val-fraction", val_fraction, "--seed", seed))
    settings = _settings(Path(dataset_json), Path(images_dir), split, val_fraction, seed)
    settings.update(split_rule=SPLIT_RULE, split_sha256=_split_digest([i["file_name"] for i in images], splits))
    resume = _prepare_out(out, settings, overwrite, again)
    if note:  # after every refusal: the split is what gets written
        print(note)

    skipped: Counter = Counter()
    written = merged = untraced = 0
    for info, src, (image, label) in zip(images, sources, layout):
        h, w = int(info["height"]), int(info["width"])
        if not (resume and _placed(src, image)):
            _place(src, image)
        lines = []
        for ann in dataset.annotations_for(info["id"]):
            if ann.get("iscrowd", 0):
                skipped["crowd region (YOLO has no ignore regions)"] += 1
                continue
            try:
                poly, traced = annotation_polygon(ann, h, w)
                untraced += not traced
            except ValueError as e:
                reason = str(e).split(": ", 1)[-1]
                skipped["empty mask" if "empty" in reason else "no usable segmentation" if "no segmentation"
                        in reason else "malformed segmentation"] += 1
                continue
            xy = np.clip(poly / np.array([w, h], np.float32), 0.0, 1.0).reshape(-1)
            lines.append(" ".join([str(class_of[int(ann["category_id"])])] + [f"{v:.6f}" for v in xy]))
        content = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
        if not (resume and label.is_file() and label.read_bytes() == content):
            label.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(label, content, durable=False)
        written += len(lines)
        merged += _duplicate_rows(lines)
    data = {"path": str(out.resolve()), "train": f"images/{split}",
            "val": "images/val" if n_val else f"images/{split}", "names": names}
    yaml_path = out / "data.yaml"
    write_bytes_atomic(yaml_path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8"))
    summary = f"export-yolo: {len(images)} images, {written} instances written"
    if n_val:
        summary += (f"; {len(images) - n_val} in {split}, {n_val} in val ({len(set(source_groups(images)))} "
                    "source images, each on one side)")
    if skipped:
        summary += f"; skipped {sum(skipped.values())} annotations: " + ", ".join(
            f"{n} {reason}" for reason, n in sorted(skipped.items()))
    if untraced:
        summary += (f"; {untraced} polygon annotations cover no pixel for pycocotools (lines): written with "
                    "their own points")
    if merged:
        summary += (f"; note: {merged} instances repeat another of their image exactly (class and polygon), and "
                    "ultralytics keeps one of each such group (its duplicate-label rule)")
    print(summary)
    return yaml_path
