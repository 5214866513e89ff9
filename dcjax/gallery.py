r"""A static HTML gallery of a run's clusters: `python -m dcjax.gallery --workdir=RUN [--export=DIR]
[--out=DIR] [--strip=8] [--per_page=200] [--thumb=128] [--clusters_per_index=200]`.

Reads RUN/export/assignments.csv (written by training or `dcjax.export`) and the run's training
images, and writes RUN/gallery/: `index.html` (and `index_2.html`, ... past
`--clusters_per_index=200` clusters), the clusters sorted by size, each a strip of the
`--strip` images nearest its centroid with its size (and, when the images are labelled, its purity:
the share of its most common label); one page per cluster with all its members, nearest first,
`--per_page` a page (`cluster_0007.html`, `cluster_0007_2.html`, ...); `thumbs/<index>.jpg`, one
thumbnail per image (at most `--thumb` pixels a side). The pages are plain HTML and CSS with
relative links: they open from disk, no server needed. Once a page has loaded, its body's
`data-loaded` attribute counts the thumbnails the browser displayed (the tests read it).
"""

from __future__ import annotations

import csv
import html
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dcjax.data.datasets import DataError

STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1em; margin: 0.2em 0; font-weight: normal; }
.cluster { margin: 0.8em 0; padding: 0.4em; background: #fff; border: 1px solid #ddd; }
.strip, .members { display: flex; flex-wrap: wrap; gap: 4px; }
.thumb { height: 96px; width: auto; border: 1px solid #ccc; }
nav { margin: 0.8em 0; } nav a { margin-right: 1em; }
.meta { color: #666; }
"""
LOADED_SCRIPT = """<script>
window.addEventListener('load', function () {
  var n = 0;
  document.querySelectorAll('img.thumb').forEach(function (im) {
    if (im.complete && im.naturalWidth > 0) { n += 1; }
  });
  document.body.setAttribute('data-loaded', String(n));
});
</script>"""


def read_assignments(path: Path) -> dict:
    """assignments.csv as arrays: ids, cluster [N] int, distance [N] float, labels (or None)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as e:
        from dcjax.export import _missing_export

        raise DataError(_missing_export(path)) from e
    if not rows or not {"id", "cluster", "distance"} <= set(rows[0]):
        raise DataError(f"{path} is not a dcjax assignments.csv (columns id, cluster, distance)")
    return {"ids": [r["id"] for r in rows],
            "cluster": np.array([int(r["cluster"]) for r in rows]),
            "distance": np.array([float(r["distance"]) for r in rows]),
            "labels": [r["label"] for r in rows] if "label" in rows[0] else None}


def thumbnail(data: bytes, size: int) -> bytes:
    """JPEG bytes of the decoded image scaled to fit `size` x `size`."""
    from PIL import Image

    from dcjax.data.images import decode_bytes

    im = Image.fromarray(decode_bytes(data))
    im.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_thumbnails(source, folder: Path, size: int, threads: int = 4) -> None:
    """thumbs/<index>.jpg for every record of `source`."""
    from dcjax.features import progress

    folder.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        (folder / f"{i:07d}.jpg").write_bytes(thumbnail(source[i]["image"], size))

    with ThreadPoolExecutor(threads) as pool:
        for _ in progress(pool.map(one, range(len(source))), total=len(source), desc="thumbnails"):
            pass


def _img(i: int, title: str, lazy: bool) -> str:
    return (f'<img class="thumb" src="thumbs/{i:07d}.jpg" title="{html.escape(title)}" alt=""'
            + (' loading="lazy"' if lazy else "") + ">")


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head>\n<body>\n{body}\n{LOADED_SCRIPT}\n</body></html>\n")


def cluster_page_name(cluster: int, page: int) -> str:
    return f"cluster_{cluster:04d}.html" if page == 1 else f"cluster_{cluster:04d}_{page}.html"


def index_page_name(page: int) -> str:
    return "index.html" if page == 1 else f"index_{page}.html"


def _nav(links: list[tuple[str, str]]) -> str:
    return "<nav>" + "".join(f'<a href="{href}">{text}</a>' for href, text in links) + "</nav>"


def write_gallery(a: dict, out: Path, title: str, strip: int = 8, per_page: int = 200,
                  clusters_per_index: int = 200) -> dict:
    """The index pages (`clusters_per_index` clusters each: index.html, index_2.html, ...) and the
    cluster pages for assignments `a` (thumbnails already in out/thumbs); returns {'clusters':
    non-empty clusters, 'index_images': thumbnails on the index pages, 'pages': cluster pages,
    'index_pages': index pages}."""
    cluster, distance, ids, labels = a["cluster"], a["distance"], a["ids"], a["labels"]
    cohesion = a.get("cohesion") or {}
    sizes = np.bincount(cluster)
    order = [int(c) for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    # Members of every cluster, nearest first, from one sort (no pass over all images per cluster).
    by_cluster = np.lexsort((distance, cluster))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    index_pages = max(1, -(-len(order) // clusters_per_index))
    sections: list[list[str]] = [[] for _ in range(index_pages)]
    pages, shown = 0, 0
    for rank, c in enumerate(order):
        members = by_cluster[starts[c]:starts[c + 1]]
        home = index_page_name(rank // clusters_per_index + 1)
        purity = ""
        if c in cohesion:
            purity += f" · cohesion {cohesion[c]:.2f}"
        if labels is not None:
            name, count = Counter(labels[i] for i in members).most_common(1)[0]
            purity += f" · purity {count / len(members):.2f} ({html.escape(name)})"
        num_pages = -(-len(members) // per_page)
        for p in range(1, num_pages + 1):
            part = members[(p - 1) * per_page: p * per_page]
            links = [(home, "all clusters")]
            if p > 1:
                links.append((cluster_page_name(c, p - 1), "previous page"))
            if p < num_pages:
                links.append((cluster_page_name(c, p + 1), "next page"))
            imgs = "".join(_img(int(i), f"{ids[i]} · {distance[i]:.3f}"
                                + (f" · {labels[i]}" if labels is not None else ""), lazy=True)
                           for i in part)
            body = (f"<h1>cluster {c}: {len(members)} images{purity}</h1>"
                    f"<p class=\"meta\">page {p} of {num_pages}, nearest the centroid first</p>"
                    f"{_nav(links)}<div class=\"members\">{imgs}</div>{_nav(links)}")
            (out / cluster_page_name(c, p)).write_text(_page(f"cluster {c} ({p}/{num_pages})", body))
            pages += 1
        nearest = "".join(_img(int(i), f"{ids[i]} · {distance[i]:.3f}", lazy=False)
                          for i in members[:strip])
        shown += min(strip, len(members))
        sections[rank // clusters_per_index].append(
            f'<section class="cluster" id="c{c}"><h2><a href="{cluster_page_name(c, 1)}">'
            f"cluster {c}</a> · {len(members)} images{purity}</h2>"
            f'<div class="strip">{nearest}</div></section>')
    for page in range(1, index_pages + 1):
        links = []
        if page > 1:
            links.append((index_page_name(page - 1), "larger clusters"))
        if page < index_pages:
            links.append((index_page_name(page + 1), "smaller clusters"))
        head = (f"<h1>{html.escape(title)}</h1><p class=\"meta\">{len(ids)} images in "
                f"{len(order)} non-empty clusters, largest first (page {page} of {index_pages}); "
                f"each strip shows the images nearest the centroid. Click a cluster for all its "
                f"members." + (" Cohesion (0-1): how alike a cluster's features are, the norm "
                               "of their normalised mean." if cohesion else "") + "</p>"
                + (_nav(links) if links else ""))
        body = head + "\n".join(sections[page - 1]) + (_nav(links) if links else "")
        (out / index_page_name(page)).write_text(_page(title, body))
    return {"clusters": len(order), "index_images": shown, "pages": pages,
            "index_pages": index_pages}


def gallery(workdir: str, export: str | None = None, out: str | None = None, strip: int = 8,
            per_page: int = 200, thumb: int = 128,
            clusters_per_index: int = 200) -> tuple[Path, dict]:
    from dcjax.data.datasets import open_split
    from dcjax.data.importer import ensure_embedded
    from dcjax.runs import config_from_run

    for name, value in (("strip", strip), ("per_page", per_page), ("thumb", thumb),
                        ("clusters_per_index", clusters_per_index)):
        if value < 1:
            raise DataError(f"--{name}={value} must be >= 1")
    config = config_from_run(workdir)
    from dcjax.export import read_cohesion

    folder_in = Path(export or Path(workdir) / "export")
    a = read_assignments(folder_in / "assignments.csv")
    a["cohesion"] = read_cohesion(folder_in)
    d = config.data
    ensure_embedded(d.name, d.data_dir or None)
    source, _ = open_split(d.name, d.train_split, d.data_dir or None)
    if len(source) != len(a["ids"]):
        raise DataError(f"assignments.csv has {len(a['ids'])} rows but {d.name!r} split "
                        f"{d.train_split!r} has {len(source)} images: re-export the run")
    folder = Path(out) if out else Path(workdir) / "gallery"
    write_thumbnails(source, folder / "thumbs", thumb, threads=max(1, min(8, os.cpu_count() or 1)))
    title = (f"run {Path(workdir).resolve().name}: the {len(source):,} images of {d.name!r} in "
             f"{config.clustering.k} clusters")
    return folder, write_gallery(a, folder, title, strip, per_page, clusters_per_index)


def main(argv: list[str]) -> None:
    from absl import flags

    from dcjax import cli

    f = flags.FLAGS

    def body() -> None:
        folder, stats = gallery(f.workdir, f.export, f.out, f.strip, f.per_page, f.thumb,
                                f.clusters_per_index)
        print(f"{folder / 'index.html'}: {stats['clusters']} clusters on {stats['index_pages']} "
              f"index page(s), {stats['pages']} cluster page(s); open it in a browser")

    cli.run_command(argv, body)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "The run's directory (config.json, export/).")
    flags.DEFINE_string("export", None, "The export folder (default RUN/export).")
    flags.DEFINE_string("out", None, "Where to write the gallery (default RUN/gallery).")
    flags.DEFINE_integer("strip", 8, "Images per cluster on the index page.")
    flags.DEFINE_integer("per_page", 200, "Images per cluster page.")
    flags.DEFINE_integer("thumb", 128, "Thumbnail size (pixels, longer side).")
    flags.DEFINE_integer("clusters_per_index", 200, "Clusters per index page (index.html, "
                         "index_2.html, ...).")
    flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    from dcjax import cli

    app.run(main, flags_parser=cli.parse_flags)
