"""Your own images: import any folder, train without labels, export, predict, gallery."""

import csv
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from dcjax.config_lib import auto_k, load_config_file
from dcjax.data.datasets import DataError, open_split
from dcjax.data.importer import prepare

# Three colour families, so that even a barely trained network has clusters to find.
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))


def _image(rng, i: int) -> Image.Image:
    h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
    base = np.zeros((h, w, 3), np.float32) + COLOURS[i % 3]
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))


def write_photos(root: Path, rels: list[str], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    for i, rel in enumerate(rels):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(rng, i).save(path)
    return rels


def mixed_depth(n: int = 36) -> list[str]:
    """Images at depths 1 to 4, as an album folder has them."""
    places = ("", "album_1/", "album_1/2019/", "album_2/2020/summer/")
    return [f"{places[i % 4]}img_{i:03d}.{('jpg', 'png')[i % 2]}" for i in range(n)]


def add_junk(root: Path) -> dict[str, int]:
    """Files that are not images: a corrupt JPEG, a truncated PNG (skipped), and non-images by
    name (ignored); returns how many of each kind."""
    (root / "album_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    good = (root / "album_1" / "img_001.png").read_bytes()
    (root / "album_2" / "truncated.png").write_bytes(good[: len(good) // 3])
    (root / "notes.txt").write_text("holiday")
    (root / "album_1" / "meta.json").write_text("{}")
    (root / ".DS_Store").write_bytes(b"\0\0")
    return {"skipped": 2, "ignored": 3}


def all_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- import


def test_flat_folder_of_mixed_depth_imports_every_image_unlabeled(tmp_path, capsys):
    rels = write_photos(tmp_path / "photos", mixed_depth())
    junk = add_junk(tmp_path / "photos")
    report = prepare(str(tmp_path / "photos"), "photos", str(tmp_path / "tfds"))
    assert report.layout == "flat"
    assert report.counts == {"train": {"(unlabeled)": len(rels)}}
    assert sorted(p for p, _ in report.skipped) == ["album_1/broken.jpg", "album_2/truncated.png"]
    assert sum(report.ignored.values()) == junk["ignored"]
    # Nothing dropped silently: every file is imported, skipped with a reason, or counted.
    assert report.total() + len(report.skipped) + sum(report.ignored.values()) == \
        all_files(tmp_path / "photos")
    out = capsys.readouterr().out
    assert f"train: {len(rels)} images, unlabeled" in out
    assert "ignored: 3 file(s) that are not images by name (.json 1, .txt 1, hidden 1)" in out
    source, info = open_split("photos", "train", str(tmp_path / "tfds"))
    assert info.class_names == () and len(source) == len(rels)
    assert sorted(source[i]["id"].decode() for i in range(len(source))) == sorted(rels)
    assert {int(source[i]["label"]) for i in range(len(source))} == {-1}


def test_images_under_train_without_classes_are_flat(tmp_path):
    rels = write_photos(tmp_path / "shots", [f"train/{i}.jpg" for i in range(6)])
    report = prepare(str(tmp_path / "shots"), "shots", str(tmp_path / "tfds"), verbose=False)
    assert report.layout == "flat" and report.total("train") == len(rels)


def test_split_class_folder_keeps_its_splits_and_classes(tmp_path):
    rels = [f"data/{s}/{c}/{i}.png" for s in ("train", "val") for c in ("cat", "dog")
            for i in range(3)]
    write_photos(tmp_path / "pets", rels)
    report = prepare(str(tmp_path / "pets"), "pets", str(tmp_path / "tfds"), verbose=False)
    assert report.layout == "split_class"
    assert report.counts == {"train": {"cat": 3, "dog": 3}, "val": {"cat": 3, "dog": 3}}


def test_a_split_named_folder_among_others_is_not_a_split(tmp_path):
    # 'train' sits beside 'holiday': not a split/class layout, so every image is kept.
    rels = write_photos(tmp_path / "mix", ["train/a/1.jpg", "train/b/2.jpg", "holiday/x/3.jpg"])
    report = prepare(str(tmp_path / "mix"), "mix", str(tmp_path / "tfds"), verbose=False)
    assert report.layout == "flat" and report.total() == len(rels) and not report.skipped


def test_class_layout_with_a_seeded_holdout(tmp_path):
    rels = [f"{c}/{sub}{i}.jpg" for c in ("cat", "dog") for i, sub in
            zip(range(10), ("", "x/") * 5)]
    write_photos(tmp_path / "pets", rels)
    kw = dict(layout="class", holdout=0.2, seed=3, verbose=False)
    report = prepare(str(tmp_path / "pets"), "pets", str(tmp_path / "tfds"), **kw)
    assert report.total("train") == 16 and report.total("validation") == 4
    assert report.class_names == ["cat", "dog"]
    again = prepare(str(tmp_path / "pets"), "pets2", str(tmp_path / "tfds"), **kw)
    held = lambda name: sorted(open_split(name, "validation", str(tmp_path / "tfds"))[0][i]["id"]
                               for i in range(4))
    assert held("pets") == held("pets2") and again.counts == report.counts
    source, info = open_split("pets", "validation", str(tmp_path / "tfds"))
    for i in range(len(source)):
        assert info.class_names[source[i]["label"]] == source[i]["id"].decode().split("/")[0]


def test_tarball_of_a_flat_folder_imports_like_the_folder(tmp_path):
    rels = write_photos(tmp_path / "photos", mixed_depth(12))
    add_junk(tmp_path / "photos")
    with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "photos", arcname="photos")
    report = prepare(str(tmp_path / "photos.tar.gz"), "photos_tar", str(tmp_path / "tfds"),
                     verbose=False)
    assert report.layout == "flat" and report.total("train") == len(rels)
    assert len(report.skipped) == 2 and sum(report.ignored.values()) == 3
    source, _ = open_split("photos_tar", "train", str(tmp_path / "tfds"))
    assert sorted(source[i]["id"].decode() for i in range(len(source))) == \
        sorted(f"photos/{r}" for r in rels)


def test_layout_options_are_refused_where_they_mean_nothing(tmp_path):
    with pytest.raises(DataError, match="--layout and --holdout are for image folders"):
        prepare("digits", "digits_x", str(tmp_path), holdout=0.1, verbose=False)
    write_photos(tmp_path / "p", ["a.jpg", "b.jpg"])
    with pytest.raises(DataError, match="--layout="):
        prepare(str(tmp_path / "p"), "p", str(tmp_path / "tfds"), layout="tree", verbose=False)
    with pytest.raises(DataError, match="leaves an empty split"):
        prepare(str(tmp_path / "p"), "p", str(tmp_path / "tfds"), holdout=0.1, verbose=False)


def test_prepare_cli_layout_flag(tmp_path):
    write_photos(tmp_path / "p", [f"a/{i}.jpg" for i in range(4)] + [f"b/{i}.jpg" for i in range(4)])
    result = subprocess.run([sys.executable, "-m", "dcjax.data.prepare", f"--source={tmp_path / 'p'}",
                             "--name=p", f"--data_dir={tmp_path / 'tfds'}", "--layout=class",
                             "--holdout=0.25"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layout class" in result.stdout and "train: 6 images in 2 classes" in result.stdout
    assert "validation: 2 images" in result.stdout


# ----------------------------------------------------------------------------- config


def test_auto_k_rule():
    assert [auto_k(n) for n in (15, 40, 300, 9469, 50_000, 1_281_167)] == [7, 10, 10, 94, 500, 10_000]


def test_folder_config_takes_the_dataset_name():
    c = load_config_file(str(ROOT / "configs" / "folder.py"), "photos")
    assert (c.data.name, c.clustering.k, c.data.eval_split) == ("photos", 0, "validation")
    big = load_config_file(str(ROOT / "configs" / "folder.py"), "photos,alexnet224")
    assert (big.model.name, big.data.image_size) == ("alexnet", 224)
    with pytest.raises(ValueError, match="needs the dataset's name"):
        load_config_file(str(ROOT / "configs" / "folder.py"))


# ----------------------------------------------------------------------------- gallery


def synthetic_assignments(n=30, k=4, labelled=True):
    rng = np.random.default_rng(0)
    cluster = np.array([i % k if i % 5 else 0 for i in range(n)])
    return {"ids": [f"img_{i}.jpg" for i in range(n)], "cluster": cluster,
            "distance": rng.random(n), "labels": [("a", "b")[i % 2] for i in range(n)]
            if labelled else None}


def test_gallery_pages(tmp_path):
    from dcjax.gallery import write_gallery

    a = synthetic_assignments()
    (tmp_path / "thumbs").mkdir()
    stats = write_gallery(a, tmp_path, "test", strip=3, per_page=4, clusters_per_index=3)
    sizes = np.bincount(a["cluster"])
    assert stats["clusters"] == 4 and stats["index_images"] == 12 and stats["index_pages"] == 2
    assert 'href="index_2.html">smaller clusters' in (tmp_path / "index.html").read_text()
    # The smallest cluster's pages lead back to the index page that lists it.
    smallest = int(np.argsort(-sizes, kind="stable")[-1])
    assert f'href="index_2.html#c{smallest}">all clusters' in \
        (tmp_path / f"cluster_{smallest:04d}.html").read_text()
    assert stats["pages"] == sum(-(-s // 4) for s in sizes)
    index = (tmp_path / "index.html").read_text() + (tmp_path / "index_2.html").read_text()
    # Largest cluster first, and a purity for labelled images.
    order = [index.index(f'id="c{c}"') for c in np.argsort(-sizes, kind="stable")]
    assert order == sorted(order) and "purity" in index
    biggest = int(np.argmax(sizes))
    last = f"cluster_{biggest:04d}_{-(-sizes[biggest] // 4)}.html"
    assert (tmp_path / last).exists() and "previous page" in (tmp_path / last).read_text()


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium (Debian package 'chromium'; .ci/run installs it)")
    return path


def rendered(index: Path) -> str:
    """The DOM of `index` after Chromium (headless) has loaded it and its images."""
    result = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                             "--virtual-time-budget=5000", "--dump-dom", index.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def unlabeled_run(tmp_path_factory):
    """A flat folder of 48 photos at mixed depths (and junk), imported and trained with
    configs/folder.py:NAME,smoke, no flags about labels or splits."""
    from dcjax.train import train_and_evaluate

    root = tmp_path_factory.mktemp("own")
    write_photos(root / "photos", mixed_depth(48))
    add_junk(root / "photos")
    data_dir = str(root / "tfds")
    prepare(str(root / "photos"), "photos", data_dir, verbose=False)
    c = load_config_file(str(ROOT / "configs" / "folder.py"), "photos,smoke")
    c.data.data_dir = data_dir
    c.num_epochs = 2
    final = train_and_evaluate(c, str(root / "run"))
    return root, final


@pytest.mark.slow
def test_unlabeled_training_needs_no_flags(unlabeled_run):
    root, final = unlabeled_run
    records = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["nmi_labels"] is None and np.isfinite(r["loss"]) for r in records)
    assert records[1]["nmi_prev"] is not None and final["final_nmi_labels"] is None
    # The label-free signals of an unlabelled run (dcjax/quality.py).
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert 0 <= summary["pixel_agreement_nmi"] <= 1 and summary["pixel_agreement_images"] == 48
    assert summary["clusters_still_moving"] is None  # one nmi_prev: no trend yet
    with open(root / "run" / "export" / "clusters.csv", newline="") as f:
        clusters = list(csv.DictReader(f))
    assert [int(r["cluster"]) for r in clusters] == [0, 1, 2, 3]
    assert sum(int(r["size"]) for r in clusters) == 48
    cohesion = [float(r["cohesion"]) for r in clusters if r["cohesion"]]
    assert all(0 <= v <= 1 + 1e-6 for v in cohesion)
    assert summary["cohesion_median"] == pytest.approx(float(np.median(cohesion)), abs=1e-4)


@pytest.mark.slow
def test_export_holds_every_image_in_dataset_order(unlabeled_run):
    root, _ = unlabeled_run
    out = root / "run" / "export"
    with open(out / "assignments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    source, _ = open_split("photos", "train", str(root / "tfds"))
    assert [r["id"] for r in rows] == [source[i]["id"].decode() for i in range(len(source))]
    assert list(rows[0]) == ["id", "cluster", "distance"]  # no label column without labels
    cluster = np.array([int(r["cluster"]) for r in rows])
    assert cluster.min() >= 0 and cluster.max() < 4
    fc7, pca = np.load(out / "features_fc7.npy"), np.load(out / "features_pca.npy")
    assert fc7.shape == (48, 64) and pca.shape == (48, 8)
    assert np.isfinite(fc7).all() and np.allclose(np.linalg.norm(pca, axis=1), 1.0, atol=1e-4)
    z = np.load(out / "clustering.npz")
    assert z["centroids"].shape == (4, 8) and z["pca_components"].shape == (64, 8)
    # The cluster is the nearest saved centroid, at the distance written.
    d = ((pca[:, None, :] - z["centroids"][None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.argmin(d, axis=1), cluster)
    np.testing.assert_allclose(np.sqrt(d.min(1)), [float(r["distance"]) for r in rows],
                               rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_export_command_rewrites_what_training_wrote(unlabeled_run):
    root, _ = unlabeled_run
    result = subprocess.run([sys.executable, "-m", "dcjax.export", f"--workdir={root / 'run'}",
                             f"--out={root / 'again'}"], cwd=ROOT, capture_output=True, text=True,
                            env={**__import__("os").environ, "DCJAX_DATA_DIR": str(root / "tfds")})
    assert result.returncode == 0, result.stderr[-3000:]
    first, again = root / "run" / "export", root / "again"
    assert (first / "assignments.csv").read_text() == (again / "assignments.csv").read_text()
    np.testing.assert_array_equal(np.load(first / "features_fc7.npy"),
                                  np.load(again / "features_fc7.npy"))


@pytest.mark.slow
def test_predicting_the_training_images_gives_their_exported_clusters(unlabeled_run, tmp_path):
    from dcjax.predict import predict

    root, _ = unlabeled_run
    count, skipped = predict(str(root / "run"), str(root / "photos"), str(tmp_path / "p.csv"),
                             str(tmp_path / "f.npy"))
    assert count == 48 and sorted(n for n, _ in skipped) == ["album_1/broken.jpg",
                                                             "album_2/truncated.png"]
    with open(tmp_path / "p.csv", newline="") as f:
        predicted = {r["path"]: (r["cluster"], float(r["distance"])) for r in csv.DictReader(f)}
    with open(root / "run" / "export" / "assignments.csv", newline="") as f:
        exported = {r["id"]: (r["cluster"], float(r["distance"])) for r in csv.DictReader(f)}
    assert predicted.keys() == exported.keys()
    assert {k: v[0] for k, v in predicted.items()} == {k: v[0] for k, v in exported.items()}
    for k in exported:
        assert abs(predicted[k][1] - exported[k][1]) < 1e-3
    assert np.load(tmp_path / "f.npy").shape == (48, 64)


@pytest.mark.slow
def test_predict_cli_lists_unreadable_files_and_goes_on(unlabeled_run, tmp_path):
    root, _ = unlabeled_run
    files = f"{root / 'photos' / 'img_000.jpg'},{root / 'photos' / 'album_1' / 'broken.jpg'}"
    result = subprocess.run([sys.executable, "-m", "dcjax.predict", f"--workdir={root / 'run'}",
                             f"--source={files}", f"--out={tmp_path / 'p.csv'}"], cwd=ROOT,
                            capture_output=True, text=True,
                            env={**__import__("os").environ, "DCJAX_DATA_DIR": str(root / "tfds")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 2


@pytest.mark.slow
def test_gallery_renders_in_a_browser(unlabeled_run, tmp_path):
    from dcjax.gallery import gallery

    root, _ = unlabeled_run
    folder, stats = gallery(str(root / "run"), out=str(tmp_path / "g"), strip=5, per_page=10)
    dom = rendered(folder / "index.html")
    assert dom.count('class="cluster"') == stats["clusters"] >= 2
    loaded = int(dom.split('data-loaded="')[1].split('"')[0])
    assert loaded == stats["index_images"] > 0  # every thumbnail on the page was displayed
    assert len(list((folder / "thumbs").glob("*.jpg"))) == 48


def drive(page: Path, actions: str, fragment: str = "") -> str:
    """The DOM Chromium ends on after `actions` (JavaScript) ran 50 ms after `page` loaded (a copy
    of the page beside it, so its relative links work); a navigation they cause is followed."""
    copy = page.with_name("_driven_" + page.name)
    copy.write_text(page.read_text().replace(
        "</body>", "<script>window.addEventListener('load', function () { setTimeout(function () "
        "{ " + actions + " }, 50); });</script></body>"))
    return rendered_uri(copy.as_uri() + fragment)


def rendered_uri(uri: str) -> str:
    result = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                             "--virtual-time-budget=5000", "--dump-dom", uri],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def key(name: str) -> str:
    return f"document.dispatchEvent(new KeyboardEvent('keydown', {{key: '{name}'}}));"


def attribute(dom: str, name: str) -> str:
    return dom.split(f'{name}="')[1].split('"')[0]


@pytest.mark.slow
def test_gallery_can_be_acted_on_in_a_browser(unlabeled_run, tmp_path):
    """The gallery in headless Chromium: keyboard and click navigation between the index, the
    clusters, their pages and the full views; search by file name; the cluster file lists; links
    to the original files; similar images; duplicates flagged (byte-identical at import)."""
    from dcjax.gallery import gallery, read_assignments

    root, _ = unlabeled_run
    # A copy of the run whose dataset's import report lists a byte-identical pair.
    data_dir = tmp_path / "tfds"
    shutil.copytree(root / "tfds" / "photos", data_dir / "photos")
    report_file = data_dir / "photos" / "1.0.0" / "import_report.json"
    report = json.loads(report_file.read_text())
    run = tmp_path / "run"
    shutil.copytree(root / "run", run, ignore=shutil.ignore_patterns("checkpoints", "gallery"))
    config = json.loads((run / "config.json").read_text())
    config["data"]["data_dir"] = str(data_dir)
    (run / "config.json").write_text(json.dumps(config))
    a = read_assignments(run / "export" / "assignments.csv")
    ids = a["ids"]
    report["duplicates"] = [[ids[5], ids[9]]]
    report_file.write_text(json.dumps(report))
    folder, stats = gallery(str(run), strip=5, per_page=10, duplicate_similarity=0.9999)
    assert stats["duplicate_groups"] >= 1
    sizes = np.bincount(a["cluster"])
    order = [int(c) for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    members = {c: [int(i) for i in np.lexsort((a["distance"], a["cluster"]))
                   if a["cluster"][i] == c] for c in order}

    # Index: the right arrow opens the largest cluster; its title names the run.
    index = folder / "index.html"
    dom = drive(index, key("ArrowRight"))
    assert f"<h1>cluster {order[0]}: {sizes[order[0]]} images" in dom
    assert "run run: the 48 images of 'photos' in 4 clusters" in rendered(index)
    # Cluster page: right arrow -> the next cluster; PageDown -> its second page; Escape -> index.
    first = folder / f"cluster_{order[0]:04d}.html"
    assert f"<h1>cluster {order[1]}: " in drive(first, key("ArrowRight"))
    if sizes[order[0]] > 10:
        assert "page 2 of" in drive(first, key("PageDown"))
    assert 'id="search"' in drive(first, key("Escape"))
    # A click on a thumbnail opens its full view: the image, its original file, similar images.
    dom = drive(first, "document.querySelector('a.view').click();")
    shown = members[order[0]][0]
    assert attribute(dom, "data-shown") == str(shown)
    assert f'<h1 id="name">{ids[shown]}</h1>' in dom
    original = dom.split('id="orig"')[0].rsplit('href="', 1)[1].split('"')[0]
    assert original.startswith("file://") and original.endswith(ids[shown])
    assert Path(original.removeprefix("file://")).read_bytes() == (
        root / "photos" / ids[shown]).read_bytes()
    assert dom.count('<a href="view.html#') >= 8 + 2  # similar images and previous / next
    # In the viewer, the right arrow shows the next image of the cluster, Escape its page.
    view = folder / "view.html"
    dom = drive(view, key("ArrowRight"), fragment=f"#{shown}")
    assert attribute(dom, "data-shown") == str(members[order[0]][1])
    assert f"<h1>cluster {order[0]}: " in drive(view, key("Escape"), fragment=f"#{shown}")
    # The byte-identical pair is flagged in each other's view and on the duplicates page.
    dom = rendered_uri(view.as_uri() + "#5")
    assert "possible duplicates (1)" in dom and 'href="view.html#9"' in dom.split('id="duplist"')[1]
    assert "thumbs/0000005.jpg" in (folder / "duplicates.html").read_text()
    # Search by file name.
    dom = drive(index, "var b = document.getElementById('search'); b.value = 'album_2/2020'; "
                       "b.dispatchEvent(new Event('input'));")
    expected = sum("album_2/2020" in i for i in ids)
    assert f'id="hits">{expected} image(s) match' in dom and dom.count('class="hit"') == expected
    # Each cluster's file list: its members' original files, nearest first.
    for c in order:
        lines = (folder / "lists" / f"cluster_{c:04d}.txt").read_text().splitlines()
        assert lines == [str((root / "photos" / ids[i]).resolve()) for i in members[c]]
    assert f'href="lists/cluster_{order[0]:04d}.txt" download' in index.read_text()


@pytest.mark.slow
def test_labels_never_change_training(unlabeled_run, tmp_path):
    """The same folder imported with --layout=class (labels from the top folders) trains to the
    same features as the unlabeled import: labels only feed the metrics."""
    from dcjax.train import train_and_evaluate

    root, _ = unlabeled_run
    # Top folders '', album_1, album_2: class layout needs every image in a folder, so copy the
    # images that sit in a folder only, and the same set as a flat import.
    rels = [r for r in mixed_depth(48) if "/" in r]
    for name, layout in (("lab", "class"), ("unlab", "flat")):
        for r in rels:
            (tmp_path / name / r).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "photos" / r, tmp_path / name / r)
        prepare(str(tmp_path / name), f"photos_{name}", str(tmp_path / "tfds"), layout=layout,
                verbose=False)
    from dcjax.config_lib import ConfigError
    from dcjax.evaluate.run import evaluate

    features = {}
    for name in ("lab", "unlab"):
        c = load_config_file(str(ROOT / "configs" / "folder.py"), f"photos_{name},smoke")
        c.data.data_dir = str(tmp_path / "tfds")
        final = train_and_evaluate(c, str(tmp_path / f"run_{name}"))
        features[name] = np.load(tmp_path / f"run_{name}" / "export" / "features_fc7.npy")
        assert (final["final_nmi_labels"] is None) == (name == "unlab")
        # The comparison on demand: no held-out split was imported, so on the training split, as
        # at the end of the run; an unlabeled import has nothing to compare with.
        if name == "lab":
            result = evaluate(c, str(tmp_path / f"run_{name}"), "comparison")
            assert result["split"] == "train" and result["eval_split"] == "train"
            assert result["deepcluster"]["nmi"] == pytest.approx(final["final_nmi_labels"], abs=1e-6)
        else:
            with pytest.raises(ConfigError, match="has no class labels"):
                evaluate(c, str(tmp_path / f"run_{name}"), "comparison")
    np.testing.assert_array_equal(features["lab"], features["unlab"])


def test_export_predict_gallery_bad_input_is_one_line_exit_2(tmp_path):
    """A workdir without a run, a run without an export: one `error:` line, exit 2, nothing written."""
    from conftest import make_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(make_config().to_json_best_effort())
    nothing = tmp_path / "nothing"
    cases = [("dcjax.export", f"--workdir={nothing}", f"--workdir={nothing} is not a dcjax run"),
             ("dcjax.predict", f"--workdir={nothing}", f"{nothing} is not a dcjax run"),
             ("dcjax.gallery", f"--workdir={nothing}", f"--workdir={nothing} is not a dcjax run"),
             ("dcjax.predict", f"--workdir={run}", "clustering.npz does not exist: run `python -m "
                                                   f"dcjax.export --workdir={run}` first"),
             ("dcjax.gallery", f"--workdir={run}", "assignments.csv does not exist")]
    for module, workdir, message in cases:
        extra = [f"--source={tmp_path}", f"--out={tmp_path / 'p.csv'}"] if module == "dcjax.predict" else []
        result = subprocess.run([sys.executable, "-m", module, workdir, *extra], cwd=ROOT,
                                capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "run"]


def test_an_empty_file_is_skipped_as_empty(tmp_path):
    root = tmp_path / "photos"
    write_photos(root, [f"img_{i}.jpg" for i in range(12)])
    (root / "empty.jpg").write_bytes(b"")
    report = prepare(str(root), "photos", str(tmp_path / "tfds"))
    assert report.skipped == [("empty.jpg", "empty file (0 bytes)")]
    from dcjax.predict import readable

    ok, bad = readable([("empty.jpg", root / "empty.jpg"), ("img_0.jpg", root / "img_0.jpg")])
    assert bad == [("empty.jpg", "empty file (0 bytes)")] and [n for n, _ in ok] == ["img_0.jpg"]


def test_prepare_lists_byte_identical_files_and_prints_no_download_lines(tmp_path, capsys):
    import shutil

    root = tmp_path / "photos"
    write_photos(root, [f"img_{i}.jpg" for i in range(12)])
    shutil.copy(root / "img_3.jpg", root / "copy of img_3.jpg")
    report = prepare(str(root), "photos", str(tmp_path / "tfds"))
    assert report.duplicates == [("img_3.jpg", "copy of img_3.jpg")] or \
        report.duplicates == [("copy of img_3.jpg", "img_3.jpg")]
    assert report.total() == 13  # imported all the same
    out = capsys.readouterr().out
    assert "duplicates: 1 file(s) byte-identical to another" in out
    assert "Downloading and preparing" not in out and "Subsequent calls" not in out


def test_a_grown_folder_names_the_derived_k_and_points_to_predict(tmp_path):
    from dcjax.config_lib import load_config_file

    root = tmp_path / "photos"
    write_photos(root, [f"img_{i}.jpg" for i in range(12)])
    prepare(str(root), "photos", str(tmp_path / "tfds"))
    run = tmp_path / "run"
    (run / "checkpoints" / "9").mkdir(parents=True)  # a run with a checkpoint, k derived as 6
    saved = load_config_file(str(ROOT / "configs" / "folder.py"), "photos")
    saved.batch_size, saved.clustering.k, saved.clustering.pca_dim = 4, 6, 4
    saved.data.data_dir = str(tmp_path / "tfds")
    (run / "config.json").write_text(saved.to_json_best_effort())
    write_photos(root, [f"new_{i}.jpg" for i in range(2)], seed=1)
    prepare(str(root), "photos", str(tmp_path / "tfds"), overwrite=True)
    result = subprocess.run([sys.executable, "-m", "dcjax.main", "--config=configs/folder.py:photos",
                             f"--workdir={run}", "--config.batch_size=4",
                             "--config.clustering.pca_dim=4", f"--config.data.data_dir={tmp_path / 'tfds'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip()
    assert "clustering.k: one cluster per 100 images (config.clustering.k=0), 6 in the run, 7 now " \
           "for 14 images" in line
    assert f"python -m dcjax.predict --workdir={run} --source=FOLDER" in line
    assert f"--config=configs/folder.py:photos,init={run})" in line


@pytest.mark.slow
def test_a_growing_folder_follows_the_documented_path(tmp_path, capsys):
    """docs/own_images.md, "A growing folder": train; add photos and re-import (which names the
    run that used the dataset); the old run refuses to resume or export on the grown set and points
    to predict, which clusters the new photos; a new workdir fine-tunes from the old run's network
    on the grown set."""
    from dcjax.export import export_checkpoint
    from dcjax.predict import predict
    from dcjax.train import train_and_evaluate

    root, data_dir = tmp_path / "photos", str(tmp_path / "tfds")
    write_photos(root, mixed_depth(40))
    prepare(str(root), "photos", data_dir, verbose=False)

    def config(arg):
        c = load_config_file(str(ROOT / "configs" / "folder.py"), arg)
        c.data.data_dir, c.num_epochs, c.clustering.k = data_dir, 1, 0
        return c

    old = tmp_path / "runs" / "photos"
    train_and_evaluate(config("photos,smoke"), str(old))
    new = write_photos(root / "new", [f"img_{i}.jpg" for i in range(60)], seed=2)
    capsys.readouterr()
    prepare(str(root), "photos", data_dir, overwrite=True)
    said = " ".join(capsys.readouterr().out.split())
    assert f"replacing dataset 'photos', which 1 run(s) trained on: {old}" in said
    assert "(--config=configs/folder.py:photos,init=RUN)" in said
    # (auto_k gives 10 clusters to both 40 and 100 images: the image count is what differs.)
    with pytest.raises(DataError, match=r"has 100 images now but had 40 .*started from this "
                                        r"run's network: --config.model.init="):
        train_and_evaluate(config("photos,smoke"), str(old))
    with pytest.raises(DataError, match=r"has 100 images now but had 40 .* New images get them "
                                        r"without training: python -m dcjax.predict .*"
                                        r"--config=configs/folder.py:photos,init="):
        export_checkpoint(str(old))
    count, _ = predict(str(old), str(root / "new"), str(tmp_path / "new.csv"))
    with open(tmp_path / "new.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert count == len(rows) == len(new) and {int(r["cluster"]) for r in rows} <= set(range(10))
    grown = tmp_path / "runs" / "photos_grown"
    final = train_and_evaluate(config(f"photos,smoke,init={old}"), str(grown))
    assert final["nonempty_clusters"] >= 2
    with open(grown / "export" / "assignments.csv", newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 100


@pytest.mark.slow
def test_a_trained_network_clusters_another_folder_without_training(unlabeled_run, tmp_path):
    """`export --init=RUN --data=NAME --out=DIR`: the run's network clusters a folder it never saw
    (its features are the network's, the same as predict computes), and DIR is read by predict
    and gallery like a run; its network/ starts a training run; DIR is never overwritten."""
    from dcjax.config_lib import ConfigError
    from dcjax.export import export_with_network
    from dcjax.gallery import gallery
    from dcjax.predict import predict
    from dcjax.validation import validate

    root, _ = unlabeled_run
    write_photos(tmp_path / "more", mixed_depth(30), seed=1)
    prepare(str(tmp_path / "more"), "more", str(root / "tfds"), verbose=False)
    out = tmp_path / "zero"
    export_with_network(str(root / "run"), "more", str(out), k=3)
    config = json.loads((out / "config.json").read_text())
    assert (config["data"]["name"], config["clustering"]["k"], config["model"]["name"]) == (
        "more", 3, "alexnet_small")
    with open(out / "export" / "assignments.csv", newline="") as f:
        exported = {r["id"]: int(r["cluster"]) for r in csv.DictReader(f)}
    assert len(exported) == 30 and set(exported.values()) <= {0, 1, 2}
    # The features are the run's network's: predict under the run computes the same ones.
    predict(str(root / "run"), str(tmp_path / "more"), str(tmp_path / "a.csv"),
            str(tmp_path / "a.npy"))
    with open(tmp_path / "a.csv", newline="") as f:
        order = [r["path"] for r in csv.DictReader(f)]
    features = np.load(out / "export" / "features_fc7.npy")
    ids = list(exported)
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"),
                               features[[ids.index(name) for name in order]], rtol=1e-4,
                               atol=1e-5)
    # DIR reads like a run: predict gives its exported clusters, gallery renders them.
    count, _ = predict(str(out), str(tmp_path / "more"), str(tmp_path / "b.csv"))
    with open(tmp_path / "b.csv", newline="") as f:
        assert {r["path"]: int(r["cluster"]) for r in csv.DictReader(f)} == exported
    folder, _ = gallery(str(out))
    assert (folder / "index.html").exists()
    c = load_config_file(str(ROOT / "configs" / "folder.py"), "more,smoke")
    c.data.data_dir = str(root / "tfds")
    c.model.init = str(out / "network")
    validate(c, num_devices=4)
    with pytest.raises(ConfigError, match="holds a run or an export already"):
        export_with_network(str(root / "run"), "more", str(out), k=3)
    with pytest.raises(ConfigError, match="is neither a dcjax run"):
        export_with_network(str(tmp_path), "more", str(tmp_path / "other"))


@pytest.mark.slow
def test_folder_config_fine_tunes_from_a_run_or_an_export(unlabeled_run, tmp_path):
    """`configs/folder.py:NAME,init=DIR`: the model is the one DIR holds (a run or an `export
    --init` folder), and training starts from DIR's weights (the top layer of another k drawn)."""
    import jax

    from dcjax.config_lib import ConfigError
    from dcjax.export import export_with_network
    from dcjax.runs import config_from_run, init_weights, load_network
    from dcjax.train import train_and_evaluate

    root, _ = unlabeled_run
    run = root / "run"
    c = load_config_file(str(ROOT / "configs" / "folder.py"), f"photos,smoke,init={run}")
    source = config_from_run(run)
    assert c.model.init == str(run)
    assert (c.model.name, tuple(c.model.widths), c.model.fc_dim, c.data.image_size) == (
        source.model.name, tuple(source.model.widths), source.model.fc_dim,
        source.data.image_size)
    net = load_network(source, run)
    drawn = load_network(source, run, "random")
    params, stats = init_weights(str(run), drawn.params, drawn.batch_stats)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(net.params)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # An export --init folder serves the same way (its network is the run's).
    export_with_network(str(run), "photos", str(tmp_path / "zero"), k=3)
    params2, _ = init_weights(str(tmp_path / "zero"), drawn.params, drawn.batch_stats)
    np.testing.assert_array_equal(params2["conv1"]["kernel"], params["conv1"]["kernel"])
    with pytest.raises(ConfigError, match="neither a dcjax run"):
        init_weights(str(tmp_path), drawn.params, drawn.batch_stats)
    with pytest.raises(ValueError, match="is not a variant"):
        load_config_file(str(ROOT / "configs" / "folder.py"), "photos,big")

    # One epoch of fine-tuning starts from the run's weights: its network ends near them, far
    # from a random initialisation.
    c.data.data_dir = str(root / "tfds")
    c.num_epochs, c.seed = 1, 7
    train_and_evaluate(c, str(tmp_path / "tuned"))
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["model"]["init"] == str(run)
    tuned_config = config_from_run(tmp_path / "tuned")
    tuned = load_network(tuned_config, tmp_path / "tuned")
    own_draw = load_network(tuned_config, tmp_path / "tuned", "random")
    kernel = [np.asarray(x["conv1"]["kernel"]) for x in (tuned.params, net.params, own_draw.params)]
    assert np.linalg.norm(kernel[0] - kernel[1]) < 0.2 * np.linalg.norm(kernel[2] - kernel[1])
