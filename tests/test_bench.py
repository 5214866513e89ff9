"""The benchmarks run end to end at toy sizes, print their tables and write consistent JSON."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, shared_file


@pytest.mark.slow
def test_imagenet_epoch_projection(tmp_path):
    out = tmp_path / "epoch.json"
    args = ["--batch=8", "--steps=1", "--cluster_rows=3000", "--k=32", "--model=alexnet_small",
            "--image_size=32", "--feature_dim=64", "--pca_dim=16", "--iterations=3",
            "--dtypes=float32,bfloat16", "--devices_projected=1,8", f"--json={out}",
            "--kmeans_precisions=highest,bf16_3x,tf32_3x", "--kmeans_chunks=256,512"]
    run = subprocess.run([sys.executable, "-m", "dcjax.bench.imagenet_epoch", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Projected epoch of 1,281,167 images" in run.stdout
    result = json.loads(out.read_text())
    assert [m["dtype"] for m in result["measured"]] == ["float32", "bfloat16"]
    for m in result["measured"]:
        assert m["train_ips"] > 0 and m["extract_ips"] > 0 and m["kmeans_s"] > 0
        assert m["kmeans_objective"] > 0
    by = {(p["dtype"], p["devices"]): p for p in result["projected"]}
    assert len(by) == 4
    for dtype in ("float32", "bfloat16"):
        one, eight = by[(dtype, 1)], by[(dtype, 8)]
        assert one["epoch"] == pytest.approx(
            one["extract"] + one["pca"] + one["kmeans"] + one["train"])
        m = next(m for m in result["measured"] if m["dtype"] == dtype)
        assert one["train"] == pytest.approx(1_281_167 / m["train_ips"] / 60)
        for phase in ("extract", "pca", "kmeans", "train", "epoch"):
            assert eight[phase] == pytest.approx(one[phase] / 8)
    assert result["paper_minutes"] == pytest.approx(34.56)
    # tf32 exists on GPUs only: said and skipped on CPU; the other precisions x chunks all ran.
    assert "precision=tf32_3x chunk=256: k-means precision 'tf32_3x' needs GPU" in run.stdout
    rows = result["kmeans"]
    assert [(r["precision"], r["chunk"]) for r in rows] == [
        ("highest", 256), ("highest", 512), ("bf16_3x", 256), ("bf16_3x", 512)]
    assert all(r["nonempty"] == 32 for r in rows)
    ref = min((r for r in rows if r["precision"] == "highest"), key=lambda r: r["seconds"])
    chosen = result["measured"][0]
    assert chosen["kmeans_objective"] == pytest.approx(ref["objective"], rel=1e-3)
    assert chosen["kmeans_s"] == min(r["seconds"] for r in rows
                                     if abs(r["objective"] - ref["objective"])
                                     <= 1e-3 * ref["objective"])


@pytest.mark.slow
def test_kmeans_parts_table(tmp_path):
    out = tmp_path / "parts.json"
    args = ["--n=6000", "--d=16", "--k=32", "--chunks=500,1000", "--repeats=1",
            "--precisions=highest,tf32_3x,bf16_3x,exact_fast", f"--json={out}"]
    run = subprocess.run([sys.executable, "-m", "dcjax.bench.kmeans_parts", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "skipped: k-means precision 'tf32_3x' needs GPU devices" in run.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["precision"] for r in rows] == ["highest", "highest", "bf16_3x", "bf16_3x",
                                              "exact_fast", "exact_fast"]
    assert all((r["rescored"] > 0) == (r["precision"] == "exact_fast") for r in rows)
    for r in rows:
        assert r["matmul_ms"] > 0 and r["assign_ms"] > 0 and r["iteration_ms"] > 0
        assert r["matmul_tflops"] == pytest.approx(
            2 * 6000 * 32 * 16 / (r["matmul_ms"] * 1e-3) / 1e12)


def test_kmeans_table_auto_is_faiss_here(tmp_path):
    out = tmp_path / "kmeans.json"
    args = ["--sizes=3000x16x20x4", "--backends=jax,auto,faiss", "--precisions=highest,exact_fast",
            "--pca=", f"--json={out}"]
    run = subprocess.run([sys.executable, "-m", "dcjax.bench.kmeans", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {(r["backend"], r.get("precision")): r for r in json.loads(out.read_text())}
    assert set(rows) == {("jax", "highest"), ("jax", "exact_fast"), ("auto (faiss)", None),
                         ("faiss", None)}
    faiss_obj = rows["faiss", None]["objective"]
    # auto ran faiss from the same initial rows; the JAX k-means reaches the same objective.
    assert rows["auto (faiss)", None]["objective"] == pytest.approx(faiss_obj, rel=1e-6)
    for precision in ("highest", "exact_fast"):
        assert rows["jax", precision]["objective"] == pytest.approx(faiss_obj, rel=1e-4)
    assert rows["jax", "highest"]["rescored"] == 0 < rows["jax", "exact_fast"]["rescored"]
    assert "| auto (faiss) |" in run.stdout


@pytest.mark.slow
def test_pipeline_table(tmp_path):
    out = tmp_path / "pipeline.json"
    shared = shared_file("cifar10-jpg.tar.gz").parent
    args = ["--sources=cifar10", "--images=128", "--workers=1,2", "--batch=32", "--repeats=2",
            "--min_seconds=0.1", "--epoch_images=128",
            f"--json={out}", f"--shared_data={shared}"]
    run = subprocess.run([sys.executable, "-m", "dcjax.bench.pipeline", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    kinds = {(r["view"], r["loader"]) for r in rows} - {("train", "dali (CPU operators)")}
    assert kinds == {("train", "reference (PIL loop)"), ("extract", "reference (PIL loop)"),
                     ("train", "dcjax grain, decoder=fast"), ("train", "dcjax grain, decoder=pil"),
                     ("train", "dcjax grain, decoder=opencv"),
                     ("extract", "dcjax grain"), ("extract-cache", "dcjax view cache (host)"),
                     ("extract-cache", "dcjax view cache (device)")}
    for r in rows:
        assert r["images_per_sec"] > 0 and r["files"] == "32x32 JPEG q75"
        assert r["images_per_sec_per_core"] == pytest.approx(r["images_per_sec"] / r["workers"])
    ref = next(r for r in rows if r["loader"] == "reference (PIL loop)" and r["view"] == "train")
    assert ref["vs_reference"] == pytest.approx(1.0)
    lo, hi = ref["vs_reference_range"]
    assert lo <= 1.0 <= hi
    for r in rows:  # paired ratios: the median lies in their range; two workers against one
        if r["view"] == "train" and r is not ref:
            lo, hi = r["vs_reference_range"]
            assert lo <= r["vs_reference"] <= hi
            assert r["vs_one_worker"] == pytest.approx(1.0) if r["workers"] == 1 else (
                r["vs_one_worker"] > 0)
    assert "| cifar10 | train | dcjax grain, decoder=fast | 1 |" in run.stdout
