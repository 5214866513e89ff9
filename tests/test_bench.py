"""The ImageNet-epoch benchmark runs end to end at toy sizes and its projection adds up."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


def test_imagenet_epoch_projection(tmp_path):
    out = tmp_path / "epoch.json"
    args = ["--batch=8", "--steps=1", "--cluster_rows=3000", "--k=32", "--model=alexnet_small",
            "--image_size=32", "--feature_dim=64", "--pca_dim=16", "--iterations=3",
            "--dtypes=float32,bfloat16", "--devices_projected=1,8", f"--json={out}"]
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
