"""Launch scripts in dry-run mode: the exact commands they would run."""

import os
import subprocess

from conftest import ROOT


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
    assert len(out) == 3
    assert out[0] == "python3 -m dcjax.bench.imagenet_epoch --json=/tmp/gpu_out/imagenet_epoch.json"
    assert "-m dcjax.bench.models --skip_pipeline --models=alexnet --batch_224=256" in out[1]
    assert "--sizes=1281167x256x10000x20\\,1281167x256x10000x2" in out[2]
    assert out[2].endswith("--json=/tmp/gpu_out/kmeans.json")
    only = dry_run("launch/gpu_benchmarks.sh", "/tmp/gpu_out", "models", PYTHON="python3")
    assert only.count("\n") == 1 and "dcjax.bench.models" in only
    bad = subprocess.run(["bash", "launch/gpu_benchmarks.sh", "/tmp/gpu_out", "nope"], cwd=ROOT,
                         env=dict(os.environ, DRY_RUN="1"), capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown benchmark: nope" in bad.stderr


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
