"""Launch scripts in dry-run mode: the exact commands they would run."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, shared_file


def dry_run(*args, **env):
    full = dict(os.environ, DRY_RUN="1", **env)
    out = subprocess.run(["bash", *args], cwd=ROOT, env=full, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_local():
    out = dry_run("launch/local.sh", "configs/cifar10.py", "runs/c", "--config.clustering.k=300")
    assert "-m dcjax.main --config=configs/cifar10.py --workdir=runs/c" in out
    assert out.strip().endswith("--config.clustering.k=300")


def test_slurm_one_process_per_gpu_and_per_node():
    out = dry_run("launch/slurm.sbatch", "configs/imagenet_alexnet.py", "/shared/r", "--config.seed=1")
    assert out.startswith("srun --ntasks-per-node=8 --kill-on-bad-exit=1 ")
    assert "-m dcjax.main --config=configs/imagenet_alexnet.py --workdir=/shared/r --config.seed=1" in out
    assert "JAX_LOCAL_DEVICE_IDS" not in out
    out = dry_run("launch/slurm.sbatch", "configs/imagenet_alexnet.py", "/shared/r", PER_NODE="1",
                  GPUS_PER_NODE="4")
    assert out.splitlines()[0] == "JAX_LOCAL_DEVICE_IDS=0,1,2,3"
    assert "srun --ntasks-per-node=1 " in out


def test_tpu_pod():
    out = dry_run("launch/tpu_pod.sh", "run", "configs/imagenet_alexnet.py", "/mnt/runs/a",
                  "--config.seed=2", TPU_NAME="v4-32", ZONE="us-central2-b")
    assert out.startswith("gcloud compute tpus tpu-vm ssh v4-32 --zone=us-central2-b --worker=all")
    assert "dcjax.main" in out and "--workdir=/mnt/runs/a" in out and "--config.seed=2" in out
    out = dry_run("launch/tpu_pod.sh", "setup", TPU_NAME="v4-32", ZONE="z", REPO="https://x/y.git")
    assert "git\\ clone\\ https://x/y.git" in out and "requirements.txt" in out
    bad = subprocess.run(["bash", "launch/tpu_pod.sh", "fly"], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, TPU_NAME="t", ZONE="z"))
    assert bad.returncode == 2 and "unknown action" in bad.stderr


def test_gpu_benchmarks():
    out = [line.strip() for line in
           dry_run("launch/gpu_benchmarks.sh", "/tmp/gpu_out", PYTHON="python3").splitlines()]
    assert len(out) == 4  # in priority order, each under its own cap
    assert out[0].startswith("timeout -s TERM 170 python3 -m dcjax.bench.kmeans "
                             "--sizes=1281167x256x10000x20\\,100000x256x1000x20 ")
    assert "--precisions=highest\\,bf16_3x\\,exact_fast" in out[0]
    assert "--backends=jax\\,torch" in out[0] and out[0].endswith("--json=/tmp/gpu_out/kmeans.json")
    assert out[1].startswith("timeout -s TERM 150 python3 -m dcjax.main "
                             "--config=configs/imagenette.py:alexnet224 ")
    for flag in ("--config.data.decoder=opencv", "--config.data.view_cache=device",
                 "--config.data.num_workers=12", "--config.clustering.backend=jax"):
        assert flag in out[1]
    assert "-m dcjax.bench.models --skip_pipeline --models=alexnet" in out[2]
    assert "--batch_224=256" in out[2]
    assert "-m dcjax.bench.imagenet_epoch" in out[3]
    assert out[3].endswith("--json=/tmp/gpu_out/imagenet_epoch.json")
    caps = [int(line.split()[3]) for line in out]
    assert sum(caps) <= 540  # the parts fit 9 minutes of a 10-minute device call
    only = dry_run("launch/gpu_benchmarks.sh", "/tmp/gpu_out", "models", PYTHON="python3")
    assert only.count("\n") == 1 and "dcjax.bench.models" in only
    tiny = dry_run("launch/gpu_benchmarks.sh", "/tmp/gpu_out", TINY="1", PYTHON="python3")
    assert "--sizes=20000x64x100x3" in tiny and "imagenette.py:smoke" in tiny
    bad = subprocess.run(["bash", "launch/gpu_benchmarks.sh", "/tmp/gpu_out", "nope"], cwd=ROOT,
                         env=dict(os.environ, DRY_RUN="1"), capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown benchmark: nope" in bad.stderr


@pytest.mark.slow
def test_gpu_benchmarks_tiny_real_run(tmp_path):
    """Every part of the device script runs for real at toy sizes on this CPU and writes its table,
    so the one device call does not fail on a typo."""
    tarball = shared_file("imagenette-128.tar.gz")
    out = tmp_path / "out"
    # One device, as on the one-GPU device machine (the suite's 4 fake CPU devices cost time here).
    env = dict(os.environ, TINY="1", PYTHON=sys.executable, DCJAX_DATA_DIR=str(tmp_path / "tfds"),
               IMAGENETTE=str(tarball), TMPDIR=str(tmp_path), XLA_FLAGS="")
    run = subprocess.run(["bash", "launch/gpu_benchmarks.sh", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=2700)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["env.txt", "imagenet_epoch.json", "imagenet_epoch.txt", "imagenette_epoch.txt",
                     "imagenette_metrics.jsonl", "kmeans.json", "kmeans.txt", "models.txt"]
    rows = json.loads((out / "kmeans.json").read_text())
    assert {(r["backend"], r["precision"]) for r in rows if r["n"] == 20000} == {
        ("jax", "highest"), ("jax", "bf16_3x"), ("jax", "exact_fast"),
        ("torch (cpu)", "float32"), ("torch (cpu)", "tf32")}
    exact = next(r for r in rows if r["precision"] == "exact_fast" and r["n"] == 20000)
    assert exact["same_as_first_jax"] == "yes" and exact["rescored"] > 0
    assert exact["one_pass_same_as_first_jax"] == "yes"
    torch_row = next(r for r in rows if r["backend"] == "torch (cpu)" and r["n"] == 20000)
    assert torch_row["objective"] == pytest.approx(exact["objective"], rel=1e-4)
    records = [json.loads(line) for line in
               (out / "imagenette_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["time_train"] > 0 for r in records)
    assert "| alexnet 224px | 2 | 10000 | bfloat16 |" in (out / "models.txt").read_text()
    assert json.loads((out / "imagenet_epoch.json").read_text())["measured"]
    assert "exit 0" in (out / "imagenet_epoch.txt").read_text()


def test_gpu_cifar10_runs_training_then_both_probes_on_both_networks():
    out = [line.strip() for line in dry_run("launch/gpu_cifar10.sh", "/tmp/c10", "90",
                                             PYTHON="python3", EXTRA="--config.num_epochs=60")
           .splitlines()]
    assert out[0].startswith("python3 -m dcjax.data.prepare --source=../shared/data/cifar10-jpg")
    assert out[1].startswith("timeout -s TERM 90 python3 -m dcjax.main --config=configs/cifar10.py "
                             "--workdir=/tmp/c10/run --config.optim.lr=0.025")
    evals = [line for line in out if "-m dcjax.evaluate " in line]
    assert len(evals) == 8 and all("--workdir=/tmp/c10/run" in line for line in evals)
    for views in ("augmented", "translate"):
        for init in ("trained", "random"):
            assert sum(f"linear_views={views} --init={init}" in line for line in evals) == 1
    assert all(line.endswith("--config.num_epochs=60") for line in out[1:2] + evals)
    assert sum("dcjax.evaluate.table" in line for line in out) == 2
