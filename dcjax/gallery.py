r"""A static HTML gallery of a run's clusters: `python -m dcjax.gallery --workdir=RUN [--export=DIR]
[--out=DIR] [--strip=8] [--per_page=200] [--thumb=128] [--full=1024] [--similar=8]
[--duplicate_similarity=0.985] [--clusters_per_index=200]`.

Reads RUN/export/ (assignments.csv, features_pca.npy, clusters.csv; written by training or
`dcjax.export`) and the run's training images, and writes RUN/gallery/:
  * `index.html` (and `index_2.html`, ... past `--clusters_per_index=200` clusters): the clusters
    sorted by size, each a strip of the `--strip` images nearest its centroid with its size,
    cohesion and (labelled images) purity, the share of its most common label; a search box that
    finds images by file name; a link to the duplicates page;
  * one page per cluster with all its members, nearest first, `--per_page` a page
    (`cluster_0007.html`, `cluster_0007_2.html`, ...), links to the previous / next cluster (in
    size order) and the cluster's file list `lists/cluster_0007.txt` (one file a line: the original
    file's path when the folder it was imported from is still there, else the image's id);
  * `view.html#INDEX`: one image at up to `--full` pixels, a link to its original file, the
    previous / next image of its cluster, its `--similar` nearest images in feature space (cosine
    of the clustered features, features_pca.npy) and its possible duplicates;
  * `duplicates.html`: groups of byte-identical files (found by `prepare`) and of images whose
    features have cosine similarity >= `--duplicate_similarity`;
  * `thumbs/<index>.jpg`, `full/<index>.jpg`, `gallery.js` (the data of the pages), `nav.js`,
    `search.js`.
Keyboard: left / right arrows go to the previous / next cluster (on a cluster page) or image (in
the viewer), PageUp / PageDown through a cluster's pages, Escape or u up. The pages are plain HTML,
CSS and JavaScript with relative links: they open from disk, no server needed. Once a page has
loaded, its body's `data-loaded` attribute counts the thumbnails the browser displayed (the tests
read it).
"""

from __future__ import annotations

import csv
import html
import io
import json
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
.hit { display: inline-flex; align-items: center; gap: 0.4em; margin: 2px 1em 2px 0; }
.dupflag { outline: 3px solid #c33; }
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


def scaled(data: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    """JPEG bytes of the decoded image scaled to fit each of `sizes` (one decode)."""
    from PIL import Image

    from dcjax.data.images import decode_bytes

    image = Image.fromarray(decode_bytes(data))
    out = []
    for size in sizes:
        im = image.copy()
        im.thumbnail((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85 if size <= 256 else 90)
        out.append(buf.getvalue())
    return out


def write_thumbnails(source, folder: Path, size: int, threads: int = 4,
                     full: Path | None = None, full_size: int = 1024) -> None:
    """thumbs/<index>.jpg for every record of `source` (and full/<index>.jpg with `full`)."""
    from dcjax.features import progress

    folder.mkdir(parents=True, exist_ok=True)
    if full is not None:
        full.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        made = scaled(source[i]["image"], (size,) if full is None else (size, full_size))
        (folder / f"{i:07d}.jpg").write_bytes(made[0])
        if full is not None:
            (full / f"{i:07d}.jpg").write_bytes(made[1])

    with ThreadPoolExecutor(threads) as pool:
        for _ in progress(pool.map(one, range(len(source))), total=len(source), desc="thumbnails"):
            pass


def similar_images(features: np.ndarray, count: int, threshold: float, chunk: int = 1024
                   ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """([N, count] the nearest other images by cosine similarity of `features`, most similar
    first; the pairs (i, j), i < j, whose similarity is >= `threshold`), exact, in chunks."""
    x = np.asarray(features, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    count = max(0, min(count, n - 1))
    nearest = np.zeros((n, count), np.int64)
    pairs: list[tuple[int, int]] = []
    for start in range(0, n, chunk):
        sim = x[start:start + chunk] @ x.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf  # not itself
        if count:
            part = np.argpartition(-sim, count - 1, axis=1)[:, :count]
            order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
            nearest[start:start + chunk] = np.take_along_axis(part, order, axis=1)
        i, j = np.nonzero(sim >= threshold)
        pairs += [(int(a) + start, int(b)) for a, b in zip(i, j, strict=True) if a + start < b]
    return nearest, pairs


EXACT_LIMIT = 200_000  # images; above it similar images are searched within each cluster


def similar_anywhere(features: np.ndarray, cluster: np.ndarray, count: int, threshold: float
                     ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`similar_images` over all images up to EXACT_LIMIT of them, else within each cluster (the
    nearest images of a clustered feature are nearly always in its own cluster; N^2 work is not)."""
    if len(features) <= EXACT_LIMIT:
        return similar_images(features, count, threshold)
    nearest = np.full((len(features), count), -1, np.int64)
    pairs: list[tuple[int, int]] = []
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        near, found = similar_images(np.asarray(features[members]), count, threshold)
        nearest[members, :near.shape[1]] = members[near]
        pairs += [(int(members[i]), int(members[j])) for i, j in found]
    return nearest, pairs


def duplicate_groups(pairs: list[tuple[int, int]], n: int) -> list[list[int]]:
    """The connected groups (size >= 2) of the duplicate pairs, each sorted, largest first."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in sorted({k for pair in pairs for k in pair}):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def _img(i: int, title: str, lazy: bool, flagged: bool = False) -> str:
    return (f'<a class="view" href="view.html#{i}"><img class="thumb'
            + (' dupflag' if flagged else '') + f'" src="thumbs/{i:07d}.jpg" '
            f'title="{html.escape(title)}" alt=""' + (' loading="lazy"' if lazy else "") + "></a>")


def _page(title: str, body: str, data: dict[str, str] | None = None,
          scripts: tuple[str, ...] = ("nav.js",)) -> str:
    attrs = "".join(f' data-{k}="{html.escape(v)}"' for k, v in (data or {}).items() if v)
    heads = "".join(f'<script src="{s}"></script>' for s in scripts)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style>{heads}</head>\n<body{attrs}>\n{body}\n"
            f"{LOADED_SCRIPT}\n</body></html>\n")


def cluster_page_name(cluster: int, page: int) -> str:
    return f"cluster_{cluster:04d}.html" if page == 1 else f"cluster_{cluster:04d}_{page}.html"


def index_page_name(page: int) -> str:
    return "index.html" if page == 1 else f"index_{page}.html"


def _nav(links: list[tuple[str, str]]) -> str:
    return "<nav>" + "".join(f'<a href="{href}">{text}</a>' for href, text in links) + "</nav>"


def write_gallery(a: dict, out: Path, title: str, strip: int = 8, per_page: int = 200,
                  clusters_per_index: int = 200) -> dict:
    """The index pages (`clusters_per_index` clusters each: index.html, index_2.html, ...), the
    cluster pages, their file lists, view.html, duplicates.html and gallery.js for assignments `a`
    (thumbnails already in out/thumbs, full views in out/full). Optional entries of `a`:
    'cohesion' {cluster: value}, 'similar' [N, m] indices, 'duplicates' [[indices]] groups,
    'originals' [N] file URIs or None. Returns {'clusters': non-empty clusters, 'index_images':
    thumbnails on the index pages, 'pages': cluster pages, 'index_pages': index pages,
    'duplicate_groups': groups}."""
    from dcjax import gallery_assets

    cluster, distance, ids, labels = a["cluster"], a["distance"], a["ids"], a["labels"]
    cohesion = a.get("cohesion") or {}
    originals = a.get("originals") or [None] * len(ids)
    groups = a.get("duplicates") or []
    dup_of: dict[int, list[int]] = {}
    for g in groups:
        for i in g:
            dup_of[i] = [j for j in g if j != i]
    sizes = np.bincount(cluster)
    order = [int(c) for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    # Members of every cluster, nearest first, from one sort (no pass over all images per cluster).
    by_cluster = np.lexsort((distance, cluster))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    index_pages = max(1, -(-len(order) // clusters_per_index))
    sections: list[list[str]] = [[] for _ in range(index_pages)]
    (out / "lists").mkdir(parents=True, exist_ok=True)
    pages, shown = 0, 0
    members_of: dict[int, list[int]] = {}
    for rank, c in enumerate(order):
        members = by_cluster[starts[c]:starts[c + 1]]
        members_of[c] = [int(i) for i in members]
        home = index_page_name(rank // clusters_per_index + 1)
        prev_c = cluster_page_name(order[rank - 1], 1) if rank > 0 else ""
        next_c = cluster_page_name(order[rank + 1], 1) if rank + 1 < len(order) else ""
        listing = f"lists/cluster_{c:04d}.txt"
        (out / listing).write_text("".join(
            f"{_local_path(originals[i]) or ids[i]}\n" for i in members))
        purity = ""
        if c in cohesion:
            purity += f" · cohesion {cohesion[c]:.2f}"
        if labels is not None:
            name, count = Counter(labels[i] for i in members).most_common(1)[0]
            purity += f" · purity {count / len(members):.2f} ({html.escape(name)})"
        num_pages = -(-len(members) // per_page)
        for p in range(1, num_pages + 1):
            part = members[(p - 1) * per_page: p * per_page]
            links = [(home + f"#c{c}", "all clusters")]
            if prev_c:
                links.append((prev_c, "previous cluster"))
            if next_c:
                links.append((next_c, "next cluster"))
            if p > 1:
                links.append((cluster_page_name(c, p - 1), "previous page"))
            if p < num_pages:
                links.append((cluster_page_name(c, p + 1), "next page"))
            links.append((listing, f"file list ({len(members)} files)"))
            imgs = "".join(_img(int(i), f"{ids[i]} · {distance[i]:.3f}"
                                + (f" · {labels[i]}" if labels is not None else ""), lazy=True,
                                flagged=int(i) in dup_of)
                           for i in part)
            body = (f"<h1>cluster {c}: {len(members)} images{purity}</h1>"
                    f"<p class=\"meta\">page {p} of {num_pages}, nearest the centroid first; "
                    f"click an image for its full view and similar images. Keys: left / right "
                    f"previous / next cluster, PageUp / PageDown pages, Escape all clusters.</p>"
                    f"{_nav(links)}<div class=\"members\">{imgs}</div>{_nav(links)}")
            data = {"prev": prev_c, "next": next_c, "up": home + f"#c{c}",
                    "prevpage": cluster_page_name(c, p - 1) if p > 1 else "",
                    "nextpage": cluster_page_name(c, p + 1) if p < num_pages else ""}
            (out / cluster_page_name(c, p)).write_text(
                _page(f"cluster {c} ({p}/{num_pages}) · {title}", body, data))
            pages += 1
        nearest = "".join(_img(int(i), f"{ids[i]} · {distance[i]:.3f}", lazy=False,
                               flagged=int(i) in dup_of) for i in members[:strip])
        shown += min(strip, len(members))
        sections[rank // clusters_per_index].append(
            f'<section class="cluster" id="c{c}"><h2><a href="{cluster_page_name(c, 1)}">'
            f"cluster {c}</a> · {len(members)} images{purity} · "
            f'<a href="{listing}" download>file list</a></h2>'
            f'<div class="strip">{nearest}</div></section>')
    search = ('<p><input id="search" type="search" placeholder="search file names" size="40" '
              'autocomplete="off"> <span class="meta">'
              + (f'<a href="duplicates.html">{len(groups)} group(s) of possible duplicates</a>'
                 if groups else "no duplicates found")
              + '</span></p><div id="results"></div>')
    for page in range(1, index_pages + 1):
        links = []
        if page > 1:
            links.append((index_page_name(page - 1), "larger clusters"))
        if page < index_pages:
            links.append((index_page_name(page + 1), "smaller clusters"))
        head = (f"<h1>{html.escape(title)}</h1><p class=\"meta\">{len(ids)} images in "
                f"{len(order)} non-empty clusters, largest first (page {page} of {index_pages}); "
                f"each strip shows the images nearest the centroid. Click a cluster for all its "
                f"members, an image for its full view and similar images; right arrow: the "
                f"first cluster." + (" Cohesion (0-1): how alike a cluster's features are, the "
                                     "norm of their normalised mean." if cohesion else "")
                + "</p>" + search + (_nav(links) if links else ""))
        body = head + "\n".join(sections[page - 1]) + (_nav(links) if links else "")
        first = order[(page - 1) * clusters_per_index] if order else None
        data = {"next": cluster_page_name(first, 1) if first is not None else "",
                "prevpage": index_page_name(page - 1) if page > 1 else "",
                "nextpage": index_page_name(page + 1) if page < index_pages else ""}
        (out / index_page_name(page)).write_text(
            _page(title, body, data, scripts=("gallery.js", "nav.js", "search.js")))
    dup_body = "".join(
        f'<section class="cluster"><h2>group {n + 1}: {len(g)} images</h2><div class="strip">'
        + "".join(_img(i, f"{ids[i]} (cluster {int(cluster[i])})", lazy=True) for i in g)
        + "</div></section>" for n, g in enumerate(groups))
    (out / "duplicates.html").write_text(_page(
        f"possible duplicates · {title}",
        f"<h1>possible duplicates: {len(groups)} group(s)</h1><p class=\"meta\">"
        f"{html.escape(a.get('duplicates_rule', ''))}</p>{_nav([('index.html', 'all clusters')])}"
        + (dup_body or "<p>none</p>"), {"up": "index.html"}))
    similar = a.get("similar")
    data_js = {"ids": list(ids), "cluster": [int(c) for c in cluster],
               "labels": list(labels) if labels is not None else None,
               "members": {str(c): m for c, m in members_of.items()},
               "similar": [[j for j in row if j >= 0] for row in similar.tolist()]
               if similar is not None else [],
               "dups": {str(i): js for i, js in dup_of.items()},
               "orig": list(originals), "perPage": per_page}
    (out / "gallery.js").write_text(
        "var G = " + json.dumps(data_js, separators=(",", ":")) + ";\n"
        "function pad(n, w) { n = String(n); while (n.length < w) { n = '0' + n; } return n; }\n"
        "G.thumb = function (i) { return 'thumbs/' + pad(i, 7) + '.jpg'; };\n"
        "G.full = function (i) { return 'full/' + pad(i, 7) + '.jpg'; };\n"
        "G.page = function (c, p) { var s = 'cluster_' + pad(c, 4);"
        " return (p > 1 ? s + '_' + p : s) + '.html'; };\n")
    (out / "nav.js").write_text(gallery_assets.NAV_JS)
    (out / "search.js").write_text(gallery_assets.SEARCH_JS)
    (out / "view.html").write_text(gallery_assets.VIEW_HTML.format(style=STYLE))
    return {"clusters": len(order), "index_images": shown, "pages": pages,
            "index_pages": index_pages, "duplicate_groups": len(groups)}


def _local_path(uri: str | None) -> str | None:
    if not uri:
        return None
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(uri).path)


def originals(report: dict | None, ids: list[str]) -> list[str | None]:
    """file:// URIs of the original files where the folder the dataset was imported from still
    holds them (by the import report's source and each image's id, its path under the source)."""
    source = Path(report["source"]) if report and report.get("source") else None
    if source is None or not source.is_dir():
        return [None] * len(ids)
    out: list[str | None] = []
    for i in ids:
        path = source / i
        out.append(path.resolve().as_uri() if path.is_file() else None)
    return out


def read_import_report(name: str, data_dir: str | None) -> dict | None:
    from dcjax.data.datasets import REPORT_FILE, dataset_dir, resolve_data_dir

    path = dataset_dir(name, resolve_data_dir(data_dir)) / REPORT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def gallery(workdir: str, export: str | None = None, out: str | None = None, strip: int = 8,
            per_page: int = 200, thumb: int = 128, clusters_per_index: int = 200,
            full: int = 1024, similar: int = 8,
            duplicate_similarity: float = 0.985) -> tuple[Path, dict]:
    from dcjax.data.datasets import open_split
    from dcjax.data.importer import ensure_embedded
    from dcjax.export import read_cohesion
    from dcjax.runs import config_from_run

    for name, value in (("strip", strip), ("per_page", per_page), ("thumb", thumb),
                        ("clusters_per_index", clusters_per_index), ("full", full)):
        if value < 1:
            raise DataError(f"--{name}={value} must be >= 1")
    if similar < 0:
        raise DataError(f"--similar={similar} must be >= 0")
    if not 0 < duplicate_similarity <= 1:
        raise DataError(f"--duplicate_similarity={duplicate_similarity} must be in (0, 1]")
    config = config_from_run(workdir)
    folder_in = Path(export or Path(workdir) / "export")
    a = read_assignments(folder_in / "assignments.csv")
    a["cohesion"] = read_cohesion(folder_in)
    d = config.data
    ensure_embedded(d.name, d.data_dir or None)
    source, _ = open_split(d.name, d.train_split, d.data_dir or None)
    if len(source) != len(a["ids"]):
        raise DataError(f"assignments.csv has {len(a['ids'])} rows but {d.name!r} split "
                        f"{d.train_split!r} has {len(source)} images: re-export the run")
    report = read_import_report(d.name, d.data_dir or None)
    a["originals"] = originals(report, a["ids"])
    pairs: list[tuple[int, int]] = []
    position = {name: i for i, name in enumerate(a["ids"])}
    for x, y in (report or {}).get("duplicates", []):  # byte-identical, found at import
        if x in position and y in position:
            pairs.append((position[x], position[y]))
    features_file = folder_in / "features_pca.npy"
    if features_file.exists():
        features = np.load(features_file, mmap_mode="r")
        if len(features) == len(a["ids"]):
            a["similar"], near = similar_anywhere(features, a["cluster"], similar,
                                                  duplicate_similarity)
            pairs += near
    a["duplicates"] = duplicate_groups(pairs, len(a["ids"]))
    a["duplicates_rule"] = (f"byte-identical files (found by prepare) and images whose clustered "
                            f"features have cosine similarity >= {duplicate_similarity} "
                            f"(--duplicate_similarity)")
    folder = Path(out) if out else Path(workdir) / "gallery"
    write_thumbnails(source, folder / "thumbs", thumb, threads=max(1, min(8, os.cpu_count() or 1)),
                     full=folder / "full", full_size=full)
    title = (f"run {Path(workdir).resolve().name}: the {len(source):,} images of {d.name!r} in "
             f"{config.clustering.k} clusters")
    return folder, write_gallery(a, folder, title, strip, per_page, clusters_per_index)


def main(argv: list[str]) -> None:
    from absl import flags

    from dcjax import cli

    f = flags.FLAGS

    def body() -> None:
        folder, stats = gallery(f.workdir, f.export, f.out, f.strip, f.per_page, f.thumb,
                                f.clusters_per_index, f.full, f.similar, f.duplicate_similarity)
        print(f"{folder / 'index.html'}: {stats['clusters']} clusters on {stats['index_pages']} "
              f"index page(s), {stats['pages']} cluster page(s), {stats['duplicate_groups']} "
              f"group(s) of possible duplicates; open it in a browser")

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
    flags.DEFINE_integer("full", 1024, "Size of the full views (pixels, longer side).")
    flags.DEFINE_integer("similar", 8, "Similar images shown with each image (0: none).")
    flags.DEFINE_float("duplicate_similarity", 0.985, "Images whose clustered features have at "
                       "least this cosine similarity are flagged as possible duplicates.")
    flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    from dcjax import cli

    app.run(main, flags_parser=cli.parse_flags)
