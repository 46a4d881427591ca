"""One HTML page that shows a pool, a pipeline run and an augmented dataset: `write_report`.

The page is `out_dir/index.html` with its images in `out_dir/assets/` (relative links, no external
resources, no scripts), so the folder can be copied or served anywhere. Asset names are counters, never
taken from data (category names and file names may hold '/', '<', '..' or anything else), and every text
from data is HTML-escaped. Each section keeps its id when its input is missing and says so in one line.
"""
from __future__ import annotations

import html
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

import xpaste.report.plots as plots  # light: matplotlib loads when a plot is drawn
from xpaste._version import __version__
from xpaste.data.coco import decode_annotation_mask
from xpaste.errors import XPasteError
from xpaste.imageio import read_rgb
from xpaste.io import check_output, resolve_inside, write_bytes_atomic
from xpaste.pipeline.rundir import load_mask
from xpaste.report.assets import ORIGINAL_RGB, PASTED_RGB, Assets, checker_thumb, outlined
from xpaste.report.inputs import Inputs, category_names, clip_ran, load_inputs
from xpaste.stages.build_pool import cutout


SECTIONS = [("summary", "Summary"), ("contact-sheets", "Contact sheets"), ("histograms", "Histograms"),
            ("segmenters", "Segmenters"), ("coverage", "Coverage"), ("gallery", "Gallery")]
NO_CLIP_NOTE = "CLIP scores unavailable: the pool was built without CLIP weights"
FEW = 10  # a category with fewer pool instances than this counts as poorly covered
TOP_HISTOGRAM_CATEGORIES = 8


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, default: float = np.nan) -> float:
    """A float from a possibly missing (None) or NaN value."""
    return default if value is None or not np.isfinite(value) else float(value)


def _score(value: Any, missing: str = "–") -> str:
    return missing if value is None or not np.isfinite(value) else f"{value:.3f}"


def _counts_text(counter: Counter) -> str:
    return " · ".join(f"{esc(k)}: {n}" for k, n in counter.most_common()) or "–"


# ----------------------------------------------------------------------------- sections
def _summary(inp: Inputs) -> str:
    rows, missing = [], []
    if inp.pool is not None:
        c = inp.cols
        n_cats = len(np.unique(c["category_id"]))
        where = esc(inp.pool.root) if inp.pool.root else "in memory"
        rows += [("Pool", (f"{len(inp.pool)} instances in {n_cats} categories "
                           f"({len(inp.pool.categories)} defined) · {where}")),
                 ("Sources", _counts_text(Counter(str(v or "unknown") for v in c["source"]))),
                 ("Models", _counts_text(Counter(str(v) for v in c["model"] if v)))]
        rows.append(("Segmenters", _counts_text(Counter(str(v) for v in c["segmenter"] if v))))
    else:
        missing.append("pool")
    scores = inp.cols["clip_score"] if inp.pool is not None else np.array(
        [np.nan if d.get("clip_score") is None else d["clip_score"] for d in inp.decisions], np.float64)
    if inp.pool is not None or inp.run is not None:
        scored = int(np.isfinite(scores).sum())
        if scored == 0:
            rows.append(("CLIP", f'<span class="warn">{esc(NO_CLIP_NOTE)}</span>'))
        else:
            score_cfg = ((inp.pool.header.get("config") or {}).get("score") or {}) if inp.pool is not None else {}
            model = (f"{score_cfg.get('clip')} ({score_cfg.get('pretrained')})" if score_cfg.get("clip")
                     else "model not recorded in pool.json")
            rows.append(("CLIP", f"{esc(model)}; {scored} of {len(scores)} scored"))
    if inp.run is not None:
        rows += [("Run", f"{len(inp.decisions)} candidates · {esc(inp.run)}"),
                 ("Ran", _ran_text(inp)),
                 ("Decisions", _counts_text(Counter(str(d.get("decision")) for d in inp.decisions)))]
        options = _build_options_text(inp.ran)
        if options:
            rows.append(("Build-pool options", options))
    else:
        missing.append("run folder (--run)")
    if inp.aug is not None:
        n_pasted = sum(1 for a in inp.aug["annotations"] if a.get("pasted"))
        rows.append(("Augmented", (f"{len(inp.aug['images'])} images, {len(inp.aug['annotations'])} annotations "
                                   f"({n_pasted} pasted) · {esc(inp.augmented)}")))
        if inp.foreign:
            rows.append(("Pool mismatch", f'<span class="warn foreign">{esc(inp.foreign)}</span>'))
    else:
        missing.append("augmented folder")
    if inp.dataset_rows is not None:
        freq = Counter(r["frequency"] for r in inp.dataset_rows)
        rows.append(("Target dataset", (f"{len(inp.dataset_rows)} categories (rare {freq.get('r', 0)}, common "
                                        f"{freq.get('c', 0)}, frequent {freq.get('f', 0)}) · {esc(inp.dataset)}")))
    else:
        missing.append("target dataset (--dataset)")
    body = "<table class=kv>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    body += "".join(f'<p class="muted">{esc(n)}</p>' for n in inp.notes)
    if missing:
        body += f'<p class="muted">Not given: {esc(", ".join(missing))}.</p>'
    return body


def _ran_text(inp: Inputs) -> str:
    """The stages the run folder records, the segmenters that gave its candidates and whether CLIP scored."""
    ran = inp.ran
    record = ran.get("record") or {}
    used = list(dict.fromkeys(str(d.get("segmenter")) for d in inp.decisions if d.get("segmenter")))
    configured = [str(s) for s in record.get("segmenters") or []]
    segs = configured or used
    clip = (record.get("score") or {}).get("clip")
    if clip_ran(inp):
        pretrained = (record.get("score") or {}).get("pretrained")
        clip_text = f"CLIP scored ({clip}{f', {pretrained}' if pretrained else ''})" if clip else "CLIP scored"
    else:
        clip_text = "no CLIP scoring (winners by mask area only)"
    return (f"stages: {esc(' → '.join(ran.get('stages') or ['build-pool']))} · segmenters: "
            f"{esc(', '.join(segs) or 'none recorded')} · {esc(clip_text)}")


BUILD_OPTION_KEYS = ("t", "d", "area_min", "area_max", "dedup", "real_filter", "real_min_similarity", "alpha")


def _build_options_text(ran: dict) -> str:
    """build-pool's resolved options as its record holds them (the preset's values filled in)."""
    options = (ran.get("record") or {}).get("options") or {}
    preset = options.get("preset") or (ran.get("summary") or {}).get("preset")
    parts = [f"preset {preset}"] if preset else []
    parts += [f"{k} {options[k]}" for k in BUILD_OPTION_KEYS if k in options]
    return esc(" · ".join(parts))


def _figure(img: str, caption: str, title: str = "", cls: str = "") -> str:
    return f'<figure class="{cls}" title="{esc(title)}">{img}<figcaption>{caption}</figcaption></figure>'


def _candidate_thumb(run: Path, d: dict) -> np.ndarray | None:
    """The rejected candidate as the pool would have cut it out; the whole image when there is no mask."""
    try:
        rgb = read_rgb(resolve_inside(run, d["path"], "image path"))
    except (XPasteError, KeyError, TypeError):
        return None
    rgba = None
    try:
        mask = load_mask(run, d["mask_path"]) if d.get("mask_path") else None
        if mask is not None and mask.shape == rgb.shape[:2]:
            rgba = cutout(rgb, mask)
    except XPasteError:
        pass
    if rgba is None:
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    return checker_thumb(rgba)


def _contact_sheets(inp: Inputs, assets: Assets, per_category: int, max_categories: int) -> str:
    if inp.pool is None and inp.run is None:
        return '<p class="missing">No pool or run folder given: no contact sheets.</p>'
    names = category_names(inp)
    rejected: dict[int, list[dict]] = {}
    for d in inp.decisions:
        if d.get("decision") != "kept":
            rejected.setdefault(int(d["category_id"]), []).append(d)
    pool_cats = set(inp.cols["category_id"].tolist()) if inp.pool is not None else set()
    cats = sorted(pool_cats | set(rejected))
    shown = cats[:max_categories]
    out, blocks = [], []
    if len(cats) > len(shown):
        out.append(f'<p class="muted">Showing the first {len(shown)} of {len(cats)} categories (by id).</p>')
    else:
        out.append(f'<p class="muted">Showing all {len(cats)} categories; up to {per_category} cut-outs each, '
                   "best CLIP score first.</p>")
    out.append('<p class="jump">' + " · ".join(f'<a href="#cat-{c}">{esc(names.get(c, c))}</a>' for c in shown)
               + "</p>")
    for cid in shown:
        figs = []
        rows = np.flatnonzero(inp.cols["category_id"] == cid) if inp.pool is not None else np.zeros(0, int)
        if len(rows):
            scores = inp.cols["clip_score"][rows]
            # CLIP score descending, unscored last; ties keep pool order.
            order = rows[np.lexsort((rows, np.where(np.isfinite(scores), -scores, np.inf)))]
            for r in order[:per_category]:
                c = inp.cols
                title = f"{c['source'][r] or ''} {c['segmenter'][r] or ''} {c['model'][r] or ''} {c['prompt'][r] or ''}"
                figs.append(_figure(assets.image(checker_thumb(inp.pool.rgba(int(r))), "thumb"),
                                    f"{_score(c['clip_score'][r], 'no score')}<br><span>{esc(c['source'][r] or '')}"
                                    "</span>",
                                    title=" ".join(title.split())))
        rej = sorted(rejected.get(cid, []), key=lambda d: -_num(d.get("clip_score"), -np.inf))
        rej_figs = []
        for d in rej[:per_category]:
            thumb = _candidate_thumb(inp.run, d)
            img = assets.image(thumb, "thumb") if thumb is not None else '<div class="noimg">image missing</div>'
            rej_figs.append(_figure(img, f"{_score(d.get('clip_score'))}<br><span>{esc(d.get('decision'))}</span>",
                                    title=f"{d.get('segmenter') or ''} {d.get('source') or ''}", cls="rej"))
        head = (f'<h3 id="cat-{cid}">{esc(names.get(cid, cid))} <small>id {cid} · showing {len(figs)} of '
                f'{len(rows)} cut-outs in the pool'
                + (f", {len(rej)} rejected" if inp.run is not None else "") + "</small></h3>")
        body = f'<div class="thumbs">{"".join(figs)}</div>' if figs else '<p class="muted">No pool instances.</p>'
        if rej_figs:
            body += (f'<h4>Rejected candidates (showing {len(rej_figs)} of {len(rej)})'
                     f'</h4><div class="thumbs">{"".join(rej_figs)}</div>')
        blocks.append(f'<div class="cat">{head}{body}</div>')
    return "\n".join(out) + f'<div class="cats">{"".join(blocks)}</div>'


def _histograms(inp: Inputs, assets: Assets) -> str:
    if inp.pool is None and inp.run is None:
        return '<p class="missing">No pool or run folder given: nothing to plot.</p>'
    figs, notes, hidden = [], [], []
    if inp.pool is not None and len(inp.pool):
        c = inp.cols
        source = np.array([str(v or "unknown") for v in c["source"]], dtype=object)
        groups = sorted(set(source.tolist()))
        has_clip = bool(np.isfinite(c["clip_score"]).any())
        if has_clip:
            figs.append(assets.plot(plots.histogram_by_group(
                {g: c["clip_score"][source == g] for g in groups}, "CLIP score", "Pool: CLIP score by source"),
                "CLIP score histogram"))
        else:
            notes.append(NO_CLIP_NOTE)
        has_area = _finite_count(c["area_frac"]) > 0
        if has_area:
            figs.append(assets.plot(plots.histogram_by_group(
                {g: c["area_frac"][source == g] for g in groups}, "mask area / image area",
                "Pool: mask area fraction by source"), "area histogram"))
        else:
            hidden.append("Pool: mask area fraction by source (no instance records its area)")
        if has_clip or has_area:
            ids, counts = np.unique(c["category_id"], return_counts=True)
            top = ids[np.argsort(-counts, kind="stable")][:TOP_HISTOGRAM_CATEGORIES]
            value, what = (c["clip_score"], "CLIP score") if has_clip else (c["area_frac"], "area fraction")
            per_cat = {f"{inp.pool.categories.get(int(k), k)} (id {k})":
                       {g: value[(c["category_id"] == k) & (source == g)] for g in groups} for k in top}
            figs.append(assets.plot(plots.category_histograms(
                per_cat, what, f"Pool: {what} of the {len(top)} largest of {len(ids)} categories, by source"),
                "per-category histograms", wide=True))
    if inp.decisions:
        by_decision: dict[str, list] = {}
        for d in inp.decisions:
            by_decision.setdefault(str(d.get("decision")), []).append(d)
        for key, xlabel, title, alt, why in (
                ("clip_score", "CLIP score", "Run: CLIP score of candidates by decision", "decision histogram",
                 "no candidate was scored with CLIP"),
                ("area_frac", "mask area / image area", "Run: mask area fraction by decision",
                 "decision area histogram", "no candidate records its mask area")):
            groups_d = {k: [d.get(key) for d in v] for k, v in by_decision.items()}
            if _finite_count([x for v in groups_d.values() for x in v]):
                figs.append(assets.plot(plots.histogram_by_group(groups_d, xlabel, title), alt))
            else:
                hidden.append(f"{title} ({why})")
    body = "".join(f'<p class="warn">{esc(n)}</p>' for n in notes)
    body += "".join(f'<p class="muted hidden-plot">Not drawn, no data: {esc(h)}.</p>' for h in hidden)
    if not figs:
        return body + '<p class="missing">No values to plot.</p>'
    return body + f'<div class="plots">{"".join(figs)}</div>'


def _finite_count(values) -> int:
    return int(sum(1 for v in values if v is not None and np.isfinite(v)))


def _segmenters(inp: Inputs, assets: Assets) -> str:
    if inp.decisions:
        stats: dict[str, dict] = {}
        for d in inp.decisions:
            s = stats.setdefault(str(d.get("segmenter") or "none"), {"wins": 0, "kept": 0, "scores": []})
            s["wins"] += 1
            s["kept"] += d.get("decision") == "kept"
            if np.isfinite(_num(d.get("clip_score"))):
                s["scores"].append(d["clip_score"])
        rows = [{"segmenter": k, **v} for k, v in sorted(stats.items(), key=lambda kv: -kv[1]["wins"])]
        total, kept = max(sum(r["wins"] for r in rows), 1), max(sum(r["kept"] for r in rows), 1)
        table = "".join(f"<tr><td>{esc(r['segmenter'])}</td><td>{r['wins']} ({r['wins'] / total:.0%})</td>"
                        f"<td>{r['kept']} ({r['kept'] / kept:.0%})</td>"
                        f"<td>{_score(np.mean(r['scores']) if r['scores'] else None)}</td></tr>" for r in rows)
        if clip_ran(inp):
            rule = ('For each candidate image the segmenter whose cut-out scored best with CLIP wins; the winners '
                    'then pass the CLIP bar, area and duplicate filters.')
        else:
            rule = ('No CLIP scores in this run: for each candidate image the first segmenter in the config whose '
                    'mask area is in range wins; there is no CLIP bar and no duplicate filter.')
        plot = ('<div class="plots">' + assets.plot(plots.segmenter_win_rates(rows), "segmenter win rates")
                + "</div>") if len(rows) > 1 else (
            f'<p class="muted hidden-plot">Not drawn: one segmenter ({esc(rows[0]["segmenter"])}) won every '
            "candidate.</p>")
        return (f"<p>{rule}</p>{plot}"
                + "<table><tr><th>segmenter</th><th>best for</th><th>kept</th><th>mean CLIP of wins</th></tr>"
                + table + "</table>")
    if inp.pool is not None and any(inp.cols["segmenter"]):
        counts = Counter(str(v) for v in inp.cols["segmenter"] if v)
        table = "".join(f"<tr><td>{esc(k)}</td><td>{n}</td></tr>" for k, n in counts.most_common())
        return ('<p class="missing">Win rates need the run folder (--run); here is the segmenter of each pool '
                "instance.</p><table><tr><th>segmenter</th><th>pool instances</th></tr>" + table + "</table>")
    return '<p class="missing">No segmenter information: give a pipeline run folder (--run).</p>'


def _coverage(inp: Inputs, assets: Assets, max_categories: int) -> str:
    if inp.dataset_rows is None:
        return '<p class="missing">No target dataset given (--dataset): coverage needs its category list.</p>'
    if inp.pool is not None:
        counts, what = inp.pool.counts(), "pool instances"
    elif inp.aug is not None:
        counts = dict(Counter(int(a["category_id"]) for a in inp.aug["annotations"] if a.get("pasted")))
        what = "pasted instances"
    else:
        return '<p class="missing">No pool or augmented folder given: nothing to compare with the target dataset.</p>'
    rows = [{"id": r["id"], "name": r["name"], "frequency": r["frequency"], "dataset": r["instances"],
             "count": counts.get(r["id"], 0)} for r in inp.dataset_rows]
    lines = []
    for g, gname in plots.FREQUENCY_NAMES.items():
        group = [r for r in rows if r["frequency"] == g]
        if group:
            few = sum(r["count"] < FEW for r in group)
            none = sum(r["count"] == 0 for r in group)
            lines.append(f"<li><b>{gname}</b>: {few} of {len(group)} categories have fewer than {FEW} {what}; "
                         f"{none} have none</li>")
    extra = len(set(counts) - {r["id"] for r in rows})
    if extra:
        lines.append(f"<li>{extra} pool categories are not in the target dataset</li>")
    rank = {"r": 0, "c": 1, "f": 2}
    ordered = sorted(rows, key=lambda r: (rank.get(r["frequency"], 3), r["count"], str(r["name"])))
    shown = sorted(ordered[:max_categories], key=lambda r: (rank.get(r["frequency"], 3), r["count"]))
    note = (f'<p class="muted">Chart: the {len(shown)} least covered of {len(rows)} categories, rare first.</p>'
            if len(shown) < len(rows) else "")
    body = f"<ul>{''.join(lines)}</ul>{note}<div class=plots>" + assets.plot(
        plots.coverage(shown, FEW, what), "category coverage") + "</div>"
    weak = [r for r in ordered if r["frequency"] == "r" and r["count"] < FEW]
    if weak:
        cells = "".join(f"<tr><td>{esc(r['name'])}</td><td>{r['id']}</td><td>{r['dataset']}</td>"
                        f"<td class=warn>{r['count']}</td></tr>" for r in weak[:200])
        more = f'<p class="muted">… and {len(weak) - 200} more.</p>' if len(weak) > 200 else ""
        body += (f"<h3>Rare categories with fewer than {FEW} {what}</h3><table><tr><th>category</th><th>id</th>"
                 f"<th>dataset instances</th><th>{what}</th></tr>{cells}</table>{more}")
    return body


def _gallery(inp: Inputs, assets: Assets, limit: int) -> str:
    if inp.aug is None:
        return '<p class="missing">No augmented folder given: no gallery.</p>'
    by_image: dict[Any, list[dict]] = {}
    for a in inp.aug["annotations"]:
        by_image.setdefault(a.get("image_id"), []).append(a)
    images = sorted(inp.aug["images"], key=lambda im: not any(a.get("pasted") for a in by_image.get(im.get("id"), [])))
    figs, failed = [], 0
    for im in images[:limit]:
        try:
            rgb = read_rgb(resolve_inside(inp.augmented / "images", im["file_name"], "image file name"))
        except (XPasteError, KeyError):
            failed += 1
            continue
        anns = by_image.get(im.get("id"), [])
        masks = []
        for a in anns:
            try:
                masks.append((decode_annotation_mask(a, rgb.shape[0], rgb.shape[1]), bool(a.get("pasted"))))
            except ValueError:  # one malformed mask should not hide the image
                continue
        small = outlined(rgb, masks)
        n_pasted = sum(1 for a in anns if a.get("pasted"))
        figs.append(_figure(assets.image(small, "gallery", alt=str(im.get("file_name"))),
                            f"{esc(im.get('file_name'))}<br><span>{n_pasted} pasted · {len(anns) - n_pasted} original"
                            "</span>"))
    legend = (f'<p><span class="sw" style="background:rgb{PASTED_RGB}"></span> pasted instance '
              f'<span class="sw" style="background:rgb{ORIGINAL_RGB}"></span> original instance · showing '
              f"{len(figs)} of {len(inp.aug['images'])} images, those with pasted instances first</p>")
    if failed:
        legend += f'<p class="warn">{failed} images could not be read.</p>'
    if inp.foreign:
        legend += f'<p class="warn foreign">{esc(inp.foreign)}</p>'
    return legend + f'<div class="gallery">{"".join(figs)}</div>'


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2933;color:#fff;padding:14px 24px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#cbd2d9;font-size:13px;word-break:break-all}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ddd;padding:8px 24px}
nav a{margin-right:18px;color:#0b5cad;text-decoration:none;font-weight:600}
main{max-width:1320px;margin:0 auto;padding:0 24px 40px}
section{scroll-margin-top:48px;margin-top:22px;background:#fff;border:1px solid #e4e7eb;border-radius:8px;padding:4px 20px 16px}
h2{font-size:20px;border-bottom:2px solid #e4e7eb;padding-bottom:4px}h3{font-size:16px;margin:18px 0 6px;scroll-margin-top:48px}
h3 small,.muted,figcaption span{color:#667;font-weight:normal;font-size:12px}h4{margin:8px 0 4px;font-size:13px;color:#a33}
table{border-collapse:collapse;font-size:14px}td,th{border-bottom:1px solid #eee;padding:4px 10px;text-align:left;vertical-align:top}
table.kv th{width:130px;color:#445}.warn{color:#b3261e;font-weight:600}.missing{color:#667;font-style:italic}
.jump{font-size:13px;line-height:1.8}.jump a{color:#0b5cad}
.cats{display:flex;flex-wrap:wrap;gap:0 32px;align-items:flex-start}.cat{flex:0 1 auto;min-width:0}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;text-align:center;font-size:12px;font-variant-numeric:tabular-nums}
.thumbs figure img,.noimg{display:block;margin:0 auto;max-width:96px;max-height:96px;width:auto;height:auto}
.thumbs figure{width:104px;box-sizing:border-box;background:#f2f4f5;border-radius:4px;padding:4px;min-height:124px;display:flex;flex-direction:column;justify-content:space-between;align-items:center}
figure.rej{background:#fbeeee}.noimg{width:96px;height:60px;line-height:60px;color:#a33}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:12px;align-items:start}
img.plot{max-width:100%;height:auto}img.wide{grid-column:1/-1}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.gallery img{max-width:100%;height:auto;border-radius:4px}.gallery figure{word-break:break-all}
.sw{display:inline-block;width:22px;height:10px;border:1px solid #333;vertical-align:middle;margin:0 4px 0 10px}
"""

#: What the report writes under its folder (`xpaste.io.check_output`).
OUT_ENTRIES = ("index.html", "assets")


def write_report(out_dir: str | os.PathLike, pool=None, run=None, augmented=None, dataset=None,
                 max_per_category: int = 24, max_categories: int = 60, gallery: int = 24) -> Path:
    """Write `out_dir/index.html` (+ `assets/`) about any of: a pool (folder or InstancePool), a pipeline run
    folder, an augmented dataset folder, and a target dataset json for coverage. Returns the page's path."""
    from datetime import datetime, timezone

    check_output(out_dir, writes=OUT_ENTRIES)  # before any input is read
    inp = load_inputs(pool, run, augmented, dataset)
    out = Path(out_dir)
    assets = Assets(out)
    bodies = {"summary": _summary(inp),
              "contact-sheets": _contact_sheets(inp, assets, max_per_category, max_categories),
              "histograms": _histograms(inp, assets), "segmenters": _segmenters(inp, assets),
              "coverage": _coverage(inp, assets, max_categories), "gallery": _gallery(inp, assets, gallery)}
    sections = "\n".join(f'<section id="{sid}"><h2>{title}</h2>\n{bodies[sid]}\n</section>' for sid, title in SECTIONS)
    toc = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>xpaste report</title>'
            f"<style>{CSS}</style></head><body><header><h1>xpaste report</h1><p>xpaste {esc(__version__)} · "
            f"{stamp}</p></header><nav>{toc}</nav><main>{sections}</main></body></html>\n")
    write_bytes_atomic(out / "index.html", page.encode("utf-8"))
    assets.prune()
    return out / "index.html"
